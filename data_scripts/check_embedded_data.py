"""Check the embedded data: the Fashion-MNIST IDX files from Debian's dataset-fashion-mnist package.

Exit status 1 with a message saying how to install it when missing or damaged.
"""

import argparse
import sys

from clipguard import data


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    try:
        for split, expected in (("train", 60000), ("test", 10000)):
            dataset = data.fashion_mnist(split)
            if len(dataset) != expected:
                raise data.DataError(f"Fashion-MNIST {split}: {len(dataset)} images, expected {expected}")
            counts = dataset.labels.bincount(minlength=10)
            if (counts == 0).any():
                raise data.DataError(f"Fashion-MNIST {split}: a class has no images ({counts.tolist()})")
            if not args.quiet:
                print(f"fashion-mnist {split}: {len(dataset)} images, {len(counts)} classes, "
                      f"first caption: {dataset.captions[0]!r}")
    except data.DataError as error:
        print(f"embedded data check failed: {error}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(f"embedded data OK ({data.FASHION_MNIST_DIR})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
