"""Convert external data into a cached clipguard dataset file (``.pt``) at a chosen image size.

Formats: ``csv`` (image path + caption, CleanCLIP/RoCLIP convention), ``webdataset`` (img2dataset tar shards, e.g.
CC3M), ``imagefolder`` (ImageNet-style ``root/<class>/<image>``), ``labels-csv`` (flat folder + ``image,label`` CSV,
e.g. ImageNet validation; needs --classnames, a text file with one name per line). Bad items stop the conversion
with a message naming them, or are skipped and listed with --skip-bad. Sets too large for memory are not converted
but streamed from their shards (``clipguard.shards``; ``poison_shards.py`` poisons them shard by shard).

    python data_scripts/prepare_external.py webdataset /data/cc3m/shards --image-size 64 --limit 100000 --out cc3m.pt
    python data_scripts/prepare_external.py csv /data/cc3m/train.csv --out cc3m.pt
    python data_scripts/prepare_external.py imagefolder /data/imagenet/val --classnames names.txt --out inval.pt
"""

import argparse
from pathlib import Path

from clipguard import data
from clipguard.utils import atomic_torch_save


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("format", choices=["csv", "webdataset", "imagefolder", "labels-csv"])
    parser.add_argument("source", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=None, help="webdataset: stop after this many samples")
    parser.add_argument("--classnames", type=Path, help="UTF-8 text file, one class name per line")
    parser.add_argument("--skip-bad", action="store_true", help="skip and list bad items instead of stopping")
    args = parser.parse_args()
    report = data.LoadReport()
    on_error = "skip" if args.skip_bad else "raise"
    try:
        names = data.load_classnames(args.classnames) if args.classnames else None
        if args.format == "csv":
            dataset = data.load_csv_pairs(args.source, args.image_size, on_error=on_error, report=report)
        elif args.format == "webdataset":
            dataset = data.load_webdataset(args.source, args.image_size, on_error=on_error, report=report,
                                           limit=args.limit)
        elif args.format == "imagefolder":
            dataset = data.load_image_folder(args.source, args.image_size, classnames=names, on_error=on_error,
                                             report=report)
        else:
            if names is None:
                parser.error("labels-csv needs --classnames")
            dataset = data.load_labels_csv(args.source, names, args.image_size, on_error=on_error, report=report)
    except data.DataError as error:
        print(f"error: {error}")
        return 1
    atomic_torch_save({"images": dataset.images, "captions": dataset.captions, "labels": dataset.labels,
                       "classnames": dataset.classnames, "templates": dataset.templates, "name": dataset.name}, args.out)
    print(f"wrote {len(dataset)} items to {args.out}; skipped {len(report.skipped)}")
    for reason in report.skipped[:20]:
        print(f"  skipped: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
