"""Export a clipguard dataset as PNG files + a CSV of ``image,caption`` (the CleanCLIP/RoCLIP convention), so the
authors' code can be run on exactly the data this book uses, and so `clipguard.data.load_csv_pairs` can read it back.

    python data_scripts/export_csv.py --dataset fashion-mnist --n 1000 --out /tmp/fmnist_csv
"""

import argparse
import csv
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from clipguard import experiments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="fashion-mnist", choices=sorted(experiments.DATASETS))
    parser.add_argument("--split", default="train")
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    dataset = experiments.load_dataset({"name": args.dataset, "split": args.split, "n": args.n, "seed": args.seed,
                                        "image_size": args.image_size})
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(len(dataset)), desc="writing images"):
        name = f"images/{i:07d}.png"
        Image.fromarray(np.transpose(dataset.images[i].numpy(), (1, 2, 0))).save(args.out / name)
        rows.append((name, dataset.captions[i]))
    tmp = args.out / ".train.csv.tmp"
    with open(tmp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerows(rows)
    os.replace(tmp, args.out / "train.csv")
    print(f"wrote {len(rows)} pairs to {args.out / 'train.csv'}")


if __name__ == "__main__":
    main()
