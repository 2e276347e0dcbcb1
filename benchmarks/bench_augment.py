"""Cost of the augmentations per training batch: the image policy (batched engine against the engine it replaced,
side by side), the torchvision engine, AutoAugment, and EDA captions in the step or prepared per epoch.

    .venv/bin/python benchmarks/bench_augment.py [--batch 128] [--side 32] [--threads 1 2] [--repeats 30]
                                                 [--pairs 5000] [--baseline REV]

Images are random float tensors; captions are Fashion-MNIST's. The previous image engine is the library's image
module at git revision ``--baseline`` (default: the last commit before the batched rewrite), loaded next to the
current one; each policy is timed with both engines in alternation on the same batch and seeds, and the best of
``repeats`` counts, to damp noise from other processes on a shared machine. ``cpu ms`` is the calling thread's CPU
time (with 1 torch thread: the work itself, unaffected by waiting for a core). EDA: the hook called batch by batch
(in the step) against :meth:`CaptionAugmenter.prepare_epoch` once per epoch followed by per-batch look-ups, and
the cost of tokenising the new sentences (the model caches tokens per string).
"""

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from clipguard import augment, data, models
from clipguard.scenarios import SMALL_IMAGE_POLICY

REPO = Path(__file__).resolve().parents[1]
BASELINE = "22a62ba5eb856c65e0a0870b4f6ffec580986770"  # augment/image.py with the per-image crop resize


def load_baseline(revision: str) -> types.ModuleType:
    """The image module as it was at ``revision`` (it imports only torch)."""
    source = subprocess.run(["git", "show", f"{revision}:lib/clipguard/augment/image.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("baseline_image")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{revision[:10]}:image.py", "exec"), module.__dict__)
    return module


def best_times(jobs: dict, repeats: int) -> dict[str, tuple[float, float]]:
    """Best wall and calling-thread CPU seconds of each job, the jobs run in alternation."""
    best = {name: [float("inf"), float("inf")] for name in jobs}
    for repeat in range(repeats):
        for name, job in jobs.items():
            wall, cpu = time.perf_counter(), time.thread_time()
            job(repeat)
            best[name][0] = min(best[name][0], time.perf_counter() - wall)
            best[name][1] = min(best[name][1], time.thread_time() - cpu)
    return {name: tuple(values) for name, values in best.items()}


def image_benchmarks(args, baseline: types.ModuleType) -> None:
    images = torch.rand(args.batch, 3, args.side, args.side, generator=torch.Generator().manual_seed(0))
    policies = {"book policy (scenarios.SMALL_IMAGE_POLICY)": {k: tuple(v) if isinstance(v, list) else v
                                                                 for k, v in SMALL_IMAGE_POLICY.items()},
                "ImagePolicy() (hue 0.1, jitter p 0.8)": {}}
    print(f"image policy, batch {args.batch} at {args.side} px, best of {args.repeats} (ms per batch)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for label, fields in policies.items():
            new, old = augment.ImagePolicy(**fields), baseline.ImagePolicy(**fields)
            params = augment.sample_image_params(args.batch, args.side, args.side, new, torch.Generator().manual_seed(0))
            gap = (augment.apply_image_params(images, params, new) - baseline.apply_image_params(images, params, old))
            times = best_times({
                "batched": lambda seed: augment.augment_images(images, torch.Generator().manual_seed(seed), new),
                "previous": lambda seed: baseline.augment_images(images, torch.Generator().manual_seed(seed), old),
            }, args.repeats)
            (new_wall, new_cpu), (old_wall, old_cpu) = times["batched"], times["previous"]
            print(f"  {threads} thread(s), {label}: batched {new_wall * 1e3:6.2f} ms (cpu {new_cpu * 1e3:5.2f}), "
                  f"previous {old_wall * 1e3:6.2f} ms (cpu {old_cpu * 1e3:5.2f}), "
                  f"{old_wall / new_wall:4.1f}x faster; max |batched - previous| {gap.abs().max():.1e}")
    torch.set_num_threads(max(args.threads))
    uint8 = (images * 255).round().to(torch.uint8)
    times = best_times({
        "torchvision engine": lambda seed: augment.augment_images(
            images, torch.Generator().manual_seed(seed), augment.ImagePolicy(engine="torchvision")),
        "AutoAugment (ImageNet, uint8), grouped": lambda seed: augment.autoaugment_images(
            uint8, torch.Generator().manual_seed(seed)),
        "AutoAugment (ImageNet, uint8), torchvision image by image": lambda seed: autoaugment_per_image(
            uint8, torch.Generator().manual_seed(seed)),
    }, max(3, args.repeats // 3))
    for name, (wall, _) in times.items():
        print(f"  {max(args.threads)} thread(s), {name}: {wall * 1e3:6.1f} ms per batch")
    same = torch.equal(augment.autoaugment_images(uint8, torch.Generator().manual_seed(7)),
                       autoaugment_per_image(uint8, torch.Generator().manual_seed(7)))
    grouped, single = (times[f"AutoAugment (ImageNet, uint8), {k}"][0]
                       for k in ("grouped", "torchvision image by image"))
    print(f"  AutoAugment grouped by drawn operation: {single / grouped:.2f}x faster than image by image, "
          f"identical output: {same}")


def autoaugment_per_image(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """torchvision's AutoAugment called on each image, the global RNG seeded per image from ``generator`` (the
    engine :func:`clipguard.augment.autoaugment_images` replaced)."""
    from torchvision.transforms import v2

    transform = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    seeds = torch.randint(0, 2**62, (images.shape[0],), generator=generator).tolist()
    with torch.random.fork_rng(devices=[]):
        out = []
        for image, seed in zip(images, seeds):
            torch.default_generator.manual_seed(seed)  # the CPU generator only, as the replaced engine did
            out.append(transform(image))
    return torch.stack(out)


def caption_benchmarks(args) -> None:
    captions = data.fashion_mnist("train", n=args.pairs, seed=0).captions
    augment.load_wordnet()
    eda = augment.EDA()
    eda.synonyms("shirt")
    batches = [list(range(start, start + args.batch)) for start in range(0, len(captions) - args.batch + 1,
                                                                          args.batch)]
    in_step, prepared_step, prepare = float("inf"), float("inf"), float("inf")
    for epoch in range(1, 4):  # alternate, best of three epochs each; epoch 1 also warms the synonym table
        hook = augment.CaptionAugmenter(seed=0, eda=eda)
        start = time.perf_counter()
        direct = [hook([captions[i] for i in rows], epoch, rows) for rows in batches]
        in_step = min(in_step, (time.perf_counter() - start) / len(batches))
        hook = augment.CaptionAugmenter(seed=0, eda=eda)
        start = time.perf_counter()
        hook.prepare_epoch(captions, epoch)
        prepare = min(prepare, time.perf_counter() - start)
        start = time.perf_counter()
        looked_up = [hook([captions[i] for i in rows], epoch, rows) for rows in batches]
        prepared_step = min(prepared_step, (time.perf_counter() - start) / len(batches))
        assert looked_up == direct, "prepared captions differ from the per-batch ones"
    print(f"EDA captions, {len(captions)} pairs, batch {args.batch}, best of 3 epochs: in the step "
          f"{in_step * 1e3:.2f} ms per batch; prepared: {prepared_step * 1e3:.3f} ms per batch in the step + "
          f"prepare_epoch {prepare:.2f} s per epoch ({prepare / len(batches) * 1e3:.2f} ms per batch); "
          "identical captions")
    # the step also tokenises its captions; the model caches tokens per string, and EDA makes new strings
    model = models.build_model("clipguard-tiny")
    model.tokenize(captions)
    fresh = [augment.CaptionAugmenter(seed=0, eda=eda)(captions, epoch) for epoch in (11, 12, 13)]
    tokenize = min(_seconds(lambda: [model.tokenize(sentences[rows[0]:rows[-1] + 1]) for rows in batches])
                   for sentences in fresh) / len(batches)
    cached = _seconds(lambda: [model.tokenize(fresh[0][rows[0]:rows[-1] + 1]) for rows in batches]) / len(batches)
    print(f"tokenising a batch of {args.batch} augmented captions (clipguard-tiny, open_clip BPE), best of 3 epochs: "
          f"{tokenize * 1e3:.2f} ms new sentences, {cached * 1e3:.2f} ms once cached "
          "(prepare_epoch(..., warm=model.tokenize) moves the first into the preparation)")


def _seconds(job) -> float:
    start = time.perf_counter()
    job()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--pairs", type=int, default=5000)
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the previous image engine")
    args = parser.parse_args()
    image_benchmarks(args, load_baseline(args.baseline))
    caption_benchmarks(args)


if __name__ == "__main__":
    main()
