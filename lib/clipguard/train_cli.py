"""Train one experiment spec from the command line, on one process or many (``torchrun``).

    python -m clipguard.train_cli --profile smoke --out /tmp/run
    python -m clipguard.train_cli --profile cpu --attack backdoor --defence roclip --out /tmp/roclip
    python -m clipguard.train_cli --spec my_spec.json --out /tmp/run
    torchrun --nproc_per_node 2 -m clipguard.train_cli --profile smoke --out /tmp/run_ddp   # gloo on CPU, nccl on GPU

The run is built and evaluated by the same code as :func:`clipguard.experiments.run` (:func:`~clipguard.experiments.
execute`); the first process writes ``model.pt``, ``metrics.json``, ``spec.json`` and ``summary.json`` into ``--out``.
Each process takes its shard of every global batch; the CLIP loss sees the all-gathered features, so with
LayerNorm-only models (``clipguard-tiny``) N processes give the same weights as one process on the same global batch.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from . import experiments, scenarios
from .utils import atomic_torch_save, atomic_write_json


def build_spec(args: argparse.Namespace) -> dict:
    """The spec named on the command line: a JSON file, or the profile's standard attack and a defence."""
    if args.spec is not None:
        try:
            return json.loads(args.spec.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"error: cannot read the spec {args.spec}: {error}")
    poison = {"none": None, "backdoor": scenarios.backdoor_poison(args.profile),
              "targeted": scenarios.targeted_poison(args.profile)}[args.attack]
    spec = scenarios.attack_spec(args.profile, poison, seed=args.seed, track_per_sample=False)
    if args.attack == "none":
        spec["evaluate"] = ["zeroshot", "linear_probe", "retrieval"]
    if args.epochs is not None:
        spec["train"]["epochs"] = args.epochs
    if args.n_train is not None:
        spec["data"]["n"] = args.n_train
    return scenarios.defended(spec, args.defence)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attack", choices=("none", "backdoor", "targeted"), default="none")
    parser.add_argument("--defence", default="clip", help="a name of clipguard.scenarios.DEFENCES")
    parser.add_argument("--spec", type=Path, help="a JSON experiment spec (overrides the options above)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    spec = build_spec(args)
    if spec.get("init"):
        raise SystemExit("error: a fine-tuning spec (init) starts from a stored run: use clipguard.experiments.run")
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    prepared = experiments.prepare(spec)
    rank = dist.get_rank() if distributed else 0
    work = args.out if rank == 0 else None
    if work is not None:
        work.mkdir(parents=True, exist_ok=True)
    model, metrics = experiments.execute(spec, prepared, work, progress=not distributed, device=device)
    if rank == 0:
        atomic_torch_save({k: v.cpu() for k, v in model.state_dict().items()}, args.out / "model.pt")
        atomic_write_json(args.out / "metrics.json", metrics)
        atomic_write_json(args.out / "spec.json", spec)
        atomic_write_json(args.out / "summary.json", {"seconds": metrics["train_seconds"],
                                                      "pairs_per_second": metrics["pairs_per_second"],
                                                      "world_size": dist.get_world_size() if distributed else 1})
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
