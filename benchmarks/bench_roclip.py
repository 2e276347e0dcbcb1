"""RoCLIP's per-epoch time over plain CLIP's, measured in one run (the paper's Table 5 ratio is 538.69 / 506.02 =
1.065 per epoch, "overhead mainly from augmentation").

    .venv/bin/python benchmarks/bench_roclip.py [--pairs 5000] [--repeats 3] [--device cpu]

Four objectives train on the same Fashion-MNIST pairs, same model, batch and optimiser, one epoch each, repeated
in alternation (best of ``repeats`` counts, to damp noise from other processes):
plain CLIP; CLIP with RoCLIP's augmentation; RoCLIP in a CLIP epoch (augmentation + pool refresh); RoCLIP in a
matching epoch (augmentation + nearest-pool-caption matching). Also printed: the augmentation alone per batch.
Augmentation runs in the training process (no loader workers), so on a CPU it adds to every step; the pool's own
cost is the ratio of RoCLIP to CLIP with the same augmentation.
"""

import argparse
import time

import torch

from clipguard import data, models
from clipguard.defenses import SMALL_IMAGE_POLICY, RoCLIPConfig, RoCLIPObjective, augmentation_hooks
from clipguard.train import ClipObjective, TrainConfig, train


def epoch_seconds(objective_factory, dataset, args, epoch: int) -> float:
    """Wall time of epoch ``epoch`` (1-based) of a fresh model trained with the objective."""
    model = models.build_model("clipguard-tiny", seed=0)
    config = TrainConfig(epochs=epoch, batch_size=args.batch, lr=2e-3, warmup_steps=10, device=args.device,
                         progress=False)
    result = train(model, dataset, objective_factory(), config)
    return [h for h in result.history if h["kind"] == "epoch"][-1]["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    dataset = data.fashion_mnist("train", n=args.pairs, seed=0)
    pool = max(1, round(0.02 * args.pairs))

    def augmented():  # the book's hooks: its 32 px image policy and per-epoch EDA
        return augmentation_hooks({"augment": True, "image_policy": SMALL_IMAGE_POLICY}, seed=0)

    # every=1: epoch 1 is a matching epoch; every=2: epoch 1 is a CLIP epoch of RoCLIP (pool refreshed)
    cases = {
        "CLIP": (lambda: ClipObjective(), 1),
        "CLIP + augmentation": (lambda: ClipObjective(*augmented()), 1),
        "RoCLIP, CLIP epoch": (lambda: RoCLIPObjective(RoCLIPConfig(pool_size=pool, every=2), *augmented()), 1),
        "RoCLIP, matching epoch": (lambda: RoCLIPObjective(RoCLIPConfig(pool_size=pool, every=1), *augmented()), 1),
    }
    best = {name: float("inf") for name in cases}
    for _ in range(args.repeats):
        for name, (factory, epoch) in cases.items():
            best[name] = min(best[name], epoch_seconds(factory, dataset, args, epoch))
    images = dataset.float_images(slice(0, args.batch))
    policy, captions = augmented()
    start = time.perf_counter()
    for step in range(20):
        policy(images, torch.Generator().manual_seed(step))
        captions(dataset.captions[:args.batch], 1, list(range(args.batch)))
    augment_ms = (time.perf_counter() - start) / 20 * 1000

    print(f"{args.pairs} pairs, batch {args.batch}, device {args.device}, threads {torch.get_num_threads()}, "
          f"best of {args.repeats}")
    base = best["CLIP"]
    for name, seconds in best.items():
        print(f"  {name:<26s} {seconds:7.2f} s/epoch  {args.pairs / seconds:7.0f} pairs/s  {seconds / base:5.2f}x CLIP")
    k = 3
    roclip_epoch = ((k - 1) * best["RoCLIP, CLIP epoch"] + best["RoCLIP, matching epoch"]) / k
    print(f"  RoCLIP averaged over K={k} epochs: {roclip_epoch / base:.2f}x CLIP, "
          f"{roclip_epoch / best['CLIP + augmentation']:.2f}x CLIP with the same augmentation "
          "(paper Table 5: 1.065x CLIP, 1.003x CLIP w/ Aug)")
    print(f"  augmentation alone: {augment_ms:.1f} ms per batch of {args.batch} (images + EDA captions)")


if __name__ == "__main__":
    main()
