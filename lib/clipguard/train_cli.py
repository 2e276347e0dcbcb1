"""Train one experiment spec from the command line, on one process or many (``torchrun``).

    python -m clipguard.train_cli --profile smoke --out /tmp/run
    torchrun --nproc_per_node 2 -m clipguard.train_cli --profile smoke --out /tmp/run_ddp   # gloo on CPU, nccl on GPU

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

from . import experiments
from .models import build_model
from .train import TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--seed", type=int, default=0)
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
    spec = experiments.clip_spec(args.profile, seed=args.seed)
    if args.epochs is not None:
        spec["train"]["epochs"] = args.epochs
    if args.n_train is not None:
        spec["data"]["n"] = args.n_train
    prepared = experiments.prepare(spec)
    model = build_model(spec["model"], seed=spec["model_seed"])
    device = f"cuda:{torch.cuda.current_device()}" if torch.cuda.is_available() else "cpu"
    config = TrainConfig(**{**spec["train"], "device": device}, progress=not distributed)
    result = train(model, prepared.train_data, experiments.make_objective(spec, prepared), config)
    rank = dist.get_rank() if distributed else 0
    if rank == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in model.state_dict().items()}, args.out / "model.pt")
        (args.out / "summary.json").write_text(json.dumps({"seconds": result.seconds,
                                                           "pairs_per_second": result.pairs_per_second,
                                                           "world_size": dist.get_world_size() if distributed else 1}))
    if distributed:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
