"""Export a clipguard dataset as webdataset tar shards (``KEY.png`` + ``KEY.txt``, the img2dataset layout), so the
streaming path (:mod:`clipguard.shards`) can be run on the data this book uses. PNG keeps the pixels exactly: the
shards read back at the same image size give the same content keys as the in-memory set.

    python data_scripts/export_shards.py --dataset fashion-mnist --n 10000 --per-shard 1000 --out /tmp/fmnist_shards
"""

import argparse
import io
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from clipguard import experiments
from clipguard.utils import atomic_write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist", choices=sorted(experiments.DATASETS))
    parser.add_argument("--split", default="train")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--per-shard", type=int, default=1000, help="pairs per shard")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.per_shard < 1:
        parser.error("--per-shard must be positive")
    dataset = experiments.load_dataset({"name": args.dataset, "split": args.split, "n": args.n, "seed": args.seed,
                                        "image_size": args.image_size})
    starts = range(0, len(dataset), args.per_shard)

    def write(tmp: Path, start: int) -> None:
        with wds.TarWriter(str(tmp), mtime=0.0) as writer:
            for i in range(start, min(start + args.per_shard, len(dataset))):
                buffer = io.BytesIO()
                Image.fromarray(dataset.images[i].permute(1, 2, 0).numpy()).save(buffer, format="PNG")
                writer.write({"__key__": f"{i:09d}", "png": buffer.getvalue(), "txt": dataset.captions[i]})

    for number, start in enumerate(tqdm(starts, desc="writing shards")):
        atomic_write(args.out / f"{number:05d}.tar", lambda tmp, start=start: write(tmp, start))
    print(f"wrote {len(dataset)} pairs in {len(starts)} shard(s) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
