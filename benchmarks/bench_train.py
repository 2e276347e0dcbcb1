"""Training throughput of clipguard's loop against a bare open_clip loop (same model, batch, data), in one run.

    .venv/bin/python benchmarks/bench_train.py [--pairs 6400] [--repeats 3] [--device cpu]

The bare loop is the least a training step can do: pre-tokenised captions, pre-normalised images, AdamW,
open_clip's ClipLoss, clamp of the temperature. Ours adds shuffling, caption tokenisation (cached), the schedule,
logging and progress. Runs alternate and the best of ``repeats`` counts, to damp noise from other processes.
"""

import argparse
import math
import time

import open_clip
import torch

from clipguard import data, models
from clipguard.train import TrainConfig, parameter_groups, train


def bare_open_clip(dataset, name, batch_size, device, fused=False):
    model = models.build_model(name, seed=0).to(device)
    clip = model.clip
    images = ((dataset.float_images() - model.mean.cpu()) / model.std.cpu()).to(device)
    tokens = model.tokenize(dataset.captions).to(device)
    optimizer = torch.optim.AdamW(parameter_groups(model, 0.1), lr=1e-3, fused=fused)
    loss_fn = open_clip.ClipLoss()
    steps = len(dataset) // batch_size
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0)).to(device)
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        image_features = clip.encode_image(images[idx], normalize=True)
        text_features = clip.encode_text(tokens[idx], normalize=True)
        loss = loss_fn(image_features, text_features, clip.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, math.log(100))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def ours(dataset, name, batch_size, device):
    model = models.build_model(name, seed=0)
    model.tokenize(dataset.captions)  # same footing as the bare loop: tokens cached before timing
    config = TrainConfig(epochs=1, batch_size=batch_size, lr=1e-3, warmup_steps=0, progress=False,
                         device=str(device), log_every=10)
    result = train(model, dataset, config=config)
    return result.pairs_per_second


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=6400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="clipguard-tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    image_size = models.build_model(args.model).image_size
    dataset = data.fashion_mnist("train", n=args.pairs, seed=0, image_size=image_size)
    plain, bare, mine = [], [], []
    for _ in range(args.repeats):
        plain.append(bare_open_clip(dataset, args.model, args.batch_size, device))
        bare.append(bare_open_clip(dataset, args.model, args.batch_size, device, fused=True))
        mine.append(ours(dataset, args.model, args.batch_size, device))
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, model: {args.model}, batch {args.batch_size}, "
          f"{args.pairs} pairs x {args.repeats} repeats")
    print(f"bare loop, default AdamW (as open_clip's trainer): {max(plain):6.0f} pairs/s "
          f"(runs: {', '.join(f'{v:.0f}' for v in plain)})")
    print(f"bare loop, fused AdamW (same optimiser as ours)  : {max(bare):6.0f} pairs/s "
          f"(runs: {', '.join(f'{v:.0f}' for v in bare)})")
    print(f"clipguard.train                                  : {max(mine):6.0f} pairs/s "
          f"(runs: {', '.join(f'{v:.0f}' for v in mine)})")
    print(f"ratio ours / bare with the same optimiser: {max(mine) / max(bare):.3f} (target >= 0.95); "
          f"ours / default-AdamW bare loop: {max(mine) / max(plain):.3f}")


if __name__ == "__main__":
    main()
