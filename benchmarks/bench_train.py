"""Training throughput on the CPU: clipguard's loop against a bare open_clip loop, and the loop's own speed-up
candidates (torch.compile, thread settings, channels-last), side by side in one run.

    .venv/bin/python benchmarks/bench_train.py [--section all|bare|variants|lanes] [--pairs 6400] [--repeats 3]
                                               [--device cpu] [--variants current threads-1 ...]

``bare``: the bare loop is the least a training step can do: pre-tokenised captions, pre-normalised images, AdamW,
open_clip's ClipLoss, clamp of the temperature. Ours adds shuffling, caption tokenisation (cached), the schedule,
logging and progress.

``variants``: :func:`clipguard.train.train` unchanged, two epochs of ``clipguard-tiny`` at batch 128 on 32 px
Fashion-MNIST from the same seed, each variant in a fresh process (thread pools, OpenMP and compile caches are
per process); the second epoch's time counts (the first includes torch.compile's compilation). A variant changes
only what it names, through the objective (``loss`` calls a compiled forward + loss, or passes channels-last
images) or the process (thread count, OpenMP wait policy):

* ``current``: the loop as it is (torch's default threads: one per core);
* ``threads-1``: ``torch.set_num_threads(1)``;
* ``dense-embedding`` (and ``, threads-1``): the token embedding with a dense gradient and plain fused AdamW over
  all its rows, as before :mod:`clipguard.optim` (``TrainConfig.sparse_embedding=False``); read ``current`` against
  it for what the row-sparse update saves;
* ``omp-passive``: ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep instead of spinning);
* ``channels-last``: model and images in ``torch.channels_last``;
* ``compile``: ``torch.compile`` (inductor, CPU) of the model's forward and the CLIP loss; ``compile, threads-1``:
  the same on one thread (what a book lane runs on), to be read against ``threads-1``;
* ``omp-passive + ...``: channels-last or compile with sleeping OpenMP threads (their effect without the cost of
  spinning threads on a shared machine).

Results identical under the seed means every final weight equal bit for bit to ``current``'s. Runs alternate and
the best of ``repeats`` counts, to damp noise from other processes on a shared machine.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import open_clip
import torch

from clipguard import data, models
from clipguard.losses import clip_loss
from clipguard.train import ClipObjective, TrainConfig, parameter_groups, train

VARIANTS = {  # name -> (environment, options of the worker)
    "current": ({}, {}),
    "threads-1": ({}, {"threads": 1}),
    "dense-embedding": ({}, {"sparse_embedding": False}),
    "dense-embedding, threads-1": ({}, {"sparse_embedding": False, "threads": 1}),
    "omp-passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, {}),
    "channels-last": ({}, {"channels_last": True}),
    "compile": ({}, {"compile": True}),
    "compile, threads-1": ({}, {"compile": True, "threads": 1}),
    "omp-passive + channels-last": ({"OMP_WAIT_POLICY": "PASSIVE"}, {"channels_last": True}),
    "omp-passive + compile": ({"OMP_WAIT_POLICY": "PASSIVE"}, {"compile": True}),
}


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


def bare_section(args, dataset, device) -> None:
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


class VariantObjective(ClipObjective):
    """Plain CLIP whose loss runs through a compiled forward + loss and/or on channels-last images."""

    def __init__(self, compiled: bool, channels_last: bool):
        super().__init__()
        self.compiled, self.channels_last = compiled, channels_last
        self._forward = None

    def loss(self, ctx, pass_name, model, indices):
        images, tokens = self.batch(ctx, indices)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if self._forward is None:
            def forward_and_loss(images, tokens):
                return clip_loss(*model(images, tokens))

            self._forward = torch.compile(forward_and_loss) if self.compiled else forward_and_loss
        return self._forward(images, tokens), {}


def run_variant(options: dict, args) -> dict:
    """One variant in this process: two epochs from seed 0; the second epoch's time, the final weights saved."""
    if "threads" in options:
        torch.set_num_threads(options["threads"])
    dataset = data.fashion_mnist("train", n=args.pairs, seed=0, image_size=32)
    model = models.build_model(args.model, seed=0)
    if options.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    model.tokenize(dataset.captions)
    objective = VariantObjective(options.get("compile", False), options.get("channels_last", False))
    config = TrainConfig(epochs=2, batch_size=args.batch_size, lr=1e-3, warmup_steps=0, progress=False,
                         device="cpu", log_every=10, sparse_embedding=options.get("sparse_embedding", True))
    result = train(model, dataset, objective, config)
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, options["weights"])
    epochs = result.epochs()
    return {"seconds": epochs[-1]["seconds"], "first_epoch_seconds": epochs[0]["seconds"],
            "loss": epochs[-1]["loss"], "threads": torch.get_num_threads()}


def variants_section(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench_train_"))
    best: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for name in args.variants:
            environment, options = VARIANTS[name]
            options = {**options, "weights": str(folder / f"{name}.pt")}
            command = _worker_command(options, args)
            done = subprocess.run(command, env={**os.environ, **environment}, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"variant {name} failed:\n{done.stderr[-3000:]}")
            record = json.loads(done.stdout.strip().splitlines()[-1])
            if name not in best or record["seconds"] < best[name]["seconds"]:
                best[name] = record
    reference = torch.load(folder / "current.pt")
    base = best["current"]["seconds"]
    steps = args.pairs // args.batch_size
    print(f"variants: {args.model}, batch {args.batch_size}, 32 px, {args.pairs} pairs = {steps} steps per epoch, "
          f"epoch 2 of 2, best of {args.repeats}, each variant in a fresh process, in alternation")
    for name, record in best.items():
        weights = torch.load(folder / f"{name}.pt")
        gap = max(float((weights[k].double() - reference[k].double()).abs().max()) for k in reference)
        same = "identical" if gap == 0 else f"differ (max |w - w_current| {gap:.1e})"
        print(f"  {name:<27s} {record['seconds'] * 1e3 / steps:7.1f} ms/step  {base / record['seconds']:5.2f}x current  "
              f"(epoch 1 {record['first_epoch_seconds']:6.1f} s, threads {record['threads']}, "
              f"final loss {record['loss']:.6f}; weights {same})")


def _worker_command(options: dict, args) -> list[str]:
    return [sys.executable, __file__, "--worker", json.dumps(options), "--pairs", str(args.pairs),
            "--batch-size", str(args.batch_size), "--model", args.model]


def lanes_section(args) -> None:
    """The book runner's choice (``clipguard.notebooks.default_jobs``): one kernel using every core against one
    kernel per core with one thread each, all training at the same time; pairs per second summed over kernels."""
    import clipguard.notebooks as runner

    cores = os.cpu_count() or 1
    jobs = runner.default_jobs("cpu")
    folder = Path(tempfile.mkdtemp(prefix="bench_lanes_"))
    best = {}
    for repeat in range(args.repeats):
        for lanes in (1, jobs):
            threads = max(1, cores // lanes)
            environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            workers = [subprocess.Popen(_worker_command({"weights": str(folder / f"{lanes}-{i}.pt")}, args),
                                        env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                       for i in range(lanes)]
            records = []
            for worker in workers:
                out, err = worker.communicate()
                if worker.returncode != 0:
                    raise RuntimeError(f"lane worker failed:\n{err[-3000:]}")
                records.append(json.loads(out.strip().splitlines()[-1]))
            rate = sum((args.pairs // args.batch_size) * args.batch_size / r["seconds"] for r in records)
            best[lanes] = max(best.get(lanes, 0.0), rate)
    print(f"lanes: {args.model}, batch {args.batch_size}, {cores} cores, epoch 2 of 2, best of {args.repeats}; "
          f"pairs per second summed over kernels training at the same time")
    print(f"  1 kernel x {cores} threads      {best[1]:8.0f} pairs/s  1.00x")
    if jobs > 1:
        print(f"  {jobs} kernels x {max(1, cores // jobs)} thread(s)   {best[jobs]:8.0f} pairs/s  "
              f"{best[jobs] / best[1]:.2f}x (the book runner's default)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--section", choices=["all", "bare", "variants", "lanes"], default="all")
    parser.add_argument("--pairs", type=int, default=6400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="clipguard-tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # JSON options: run one variant, print its record
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_variant(json.loads(args.worker), args)))
        return
    if "current" not in args.variants:
        args.variants = ["current", *args.variants]
    if args.section in ("all", "bare"):
        device = torch.device(args.device)
        image_size = models.build_model(args.model).image_size
        bare_section(args, data.fashion_mnist("train", n=args.pairs, seed=0, image_size=image_size), device)
    if args.section in ("all", "variants"):
        variants_section(args)
    if args.section in ("all", "lanes"):
        lanes_section(args)


if __name__ == "__main__":
    main()
