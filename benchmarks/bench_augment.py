"""Throughput of the augmentations: image policy (both engines), AutoAugment, EDA captions.

    .venv/bin/python benchmarks/bench_augment.py [--images 2048] [--side 32] [--batch 256] [--threads 1 2]
                                                 [--captions 5000] [--repeats 3]

Images are random float tensors; captions are Fashion-MNIST's templated captions. Best of ``repeats`` counts, to
damp noise from other processes. EDA is timed cold (empty synonym cache, as in the first epoch) and warm.
"""

import argparse
import time

import torch

from clipguard import augment, data


def best_rate(fn, items: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return items / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--captions", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    images = torch.rand(args.images, 3, args.side, args.side, generator=torch.Generator().manual_seed(0))
    batches = images.split(args.batch)
    jobs = {
        "policy, batched engine": lambda b, g: augment.augment_images(b, g, augment.ImagePolicy()),
        "policy, torchvision engine": lambda b, g: augment.augment_images(b, g, augment.ImagePolicy(engine="torchvision")),
        "AutoAugment (ImageNet)": augment.autoaugment_images,
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, job in jobs.items():
            def run():
                for i, batch in enumerate(batches):
                    job(batch, torch.Generator().manual_seed(i))
            rate = best_rate(run, args.images, args.repeats)
            print(f"{name:28s} {args.side:4d} px, batch {args.batch}, {threads} thread(s): {rate:8.0f} images/s")

    captions = data.fashion_mnist("train", n=args.captions, seed=0).captions
    start = time.perf_counter()
    augment.load_wordnet()
    print(f"load_wordnet: {time.perf_counter() - start:.1f} s")
    eda = augment.EDA()
    cold = best_rate(lambda: augment.augment_captions(captions, 0, 0, eda=eda), len(captions), 1)
    warm = best_rate(lambda: augment.augment_captions(captions, 0, 1, eda=eda), len(captions), args.repeats)
    print(f"EDA ({len(captions)} captions): {cold:8.0f} captions/s cold, {warm:8.0f} captions/s warm")


if __name__ == "__main__":
    main()
