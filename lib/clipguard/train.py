"""One training loop for CLIP pre-training and fine-tuning, with pluggable objectives.

The loop owns what every method shares: shuffling (seeded per epoch), AdamW with the papers' weight-decay
exclusions, linear warm-up then cosine (the correct schedule; ``shifted_schedule=True`` reproduces the released
code's one-epoch shift), the clamped temperature, AMP on GPU, DDP, checkpoints with exact resume, progress bars and
JSON-lines metrics. An :class:`Objective` decides what an epoch is made of (:class:`Pass` es over index sets, each
with its own loss) and computes each batch's loss, so RoCLIP, SafeCLIP and CleanCLIP plug in without copying the
loop.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
import torch.distributed as dist
from tqdm import tqdm

from .data import ImageCaptionSet
from .losses import clip_loss, gather_features
from .models import CLIPModel
from .optim import RowSparseAdamW, sparse_embedding_grads
from .utils import atomic_torch_save, atomic_write_text, cpu_threads, derive_seed

__all__ = ["TrainConfig", "Pass", "Context", "Objective", "ClipObjective", "train", "TrainResult", "cosine_lr",
           "parameter_groups", "make_optimizer", "atomic_torch_save"]


@dataclass
class TrainConfig:
    """Optimisation settings (the papers' recipe scaled down; see methods.md 1.4)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_logit_scale: float = 100.0
    seed: int = 0
    shifted_schedule: bool = False
    amp: bool = True
    device: str = "auto"
    threads: int | None = None  # CPU threads to train on (None: torch's setting); changes rounding, so part of a key
    log_every: int = 10
    progress: bool = True
    checkpoint_seconds: float = 60.0  # with a run_dir: checkpoint after an epoch once this much time has passed
    sparse_embedding: bool = True  # on one CPU process: row-sparse token-embedding updates, same numbers (optim.py)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {self.epochs}, {self.batch_size}")
        if not self.checkpoint_seconds >= 0:
            raise ValueError(f"checkpoint_seconds must be >= 0, got {self.checkpoint_seconds}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        self.betas = tuple(self.betas)

    def identity(self) -> dict:
        """The settings that change results (not progress bars or logging)."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("progress", "log_every", "device", "checkpoint_seconds", "sparse_embedding")}


def cosine_lr(step: float, base_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warm-up ``base * (t+1)/W`` for t < W, then cosine from base to 0 at ``total_steps``."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / span)) * base_lr


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay for gains, biases, norms and the logit scale (names with bn/ln/bias/logit_scale, or
    fewer than 2 dims), as the papers and open_clip do."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exclude = param.ndim < 2 or any(tag in name for tag in ("bn", "ln", "bias", "logit_scale"))
        (no_decay if exclude else decay).append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def make_optimizer(model: torch.nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with the papers' settings; the fused kernel where torch has one (7x faster steps than the default
    per-tensor loop on CPU for our tiny models, identical maths). On the CPU it is :class:`RowSparseAdamW`, which
    also takes the sparse embedding gradients of :func:`clipguard.optim.sparse_embedding_grads` (same numbers)."""
    fused = device.type in ("cpu", "cuda")
    kind = RowSparseAdamW if device.type == "cpu" else torch.optim.AdamW
    return kind(parameter_groups(model, config.weight_decay), lr=config.lr, betas=config.betas, eps=config.eps,
                fused=fused)


@dataclass
class Pass:
    """One sweep over ``indices`` in an epoch, trained with the objective's loss called ``name``.

    ``lr`` overrides the base learning rate; ``constant_lr`` skips the schedule (SafeCLIP's low-lr CLIP epoch)."""

    name: str
    indices: torch.Tensor
    lr: float | None = None
    constant_lr: bool = False


@dataclass
class Context:
    """What an objective sees: the data, the (unwrapped) model, the epoch, seeded generators, the device."""

    data: ImageCaptionSet
    model: CLIPModel
    config: TrainConfig
    device: torch.device
    epoch: int = 0
    step: int = 0
    rank: int = 0
    world_size: int = 1
    state: dict = field(default_factory=dict)

    def generator(self, *purpose: object) -> torch.Generator:
        """A generator seeded by (seed, epoch, purpose): reproducible, and independent across purposes."""
        return torch.Generator().manual_seed(derive_seed(self.config.seed, self.epoch, *purpose))

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return self.data.float_images(indices).to(self.device, non_blocking=True)

    def tokens(self, indices: torch.Tensor, captions: Sequence[str] | None = None) -> torch.Tensor:
        if captions is None:
            captions = [self.data.captions[i] for i in indices.tolist()]
        return self.model.tokenize(list(captions)).to(self.device, non_blocking=True)


class Objective(Protocol):
    """What a training method supplies. Subclass :class:`ClipObjective` for the common parts."""

    name: str

    def plan_epoch(self, ctx: Context) -> list[Pass]: ...

    def loss(self, ctx: Context, pass_name: str, model: torch.nn.Module, indices: torch.Tensor
             ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def end_epoch(self, ctx: Context) -> dict[str, float]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def identity(self) -> dict: ...

    # Optional: ``learning_rate(ctx, plan, default_lr) -> float`` replaces the loop's schedule (called every step,
    # before the step; ``ctx.step`` counts steps taken so far), for objectives whose phases each need their own.


class ClipObjective:
    """Plain CLIP pre-training (Eq. 1): every epoch, one pass over all pairs.

    ``image_augment(images, generator)`` and ``text_augment(captions, epoch, indices)`` are optional hooks (RoCLIP's
    augmented CLIP epochs use them)."""

    name = "clip"

    def __init__(self, image_augment: Callable | None = None, text_augment: Callable | None = None):
        self.image_augment = image_augment
        self.text_augment = text_augment

    def plan_epoch(self, ctx: Context) -> list[Pass]:
        self.prepare_captions(ctx)
        return [Pass("clip", torch.arange(len(ctx.data)))]

    def prepare_captions(self, ctx: Context) -> None:
        """Take caption augmentation and its tokens off the step: this epoch's captions now, the next epoch's in a
        worker thread while this one trains. The sentences are the ones the step would draw (seeded by epoch and
        row), so results do not change."""
        prepare = getattr(self.text_augment, "prepare_epoch", None)
        if prepare is None:
            return
        prepare(ctx.data.captions, ctx.epoch, warm=ctx.model.tokenize)
        if ctx.epoch + 1 < ctx.config.epochs:
            prepare(ctx.data.captions, ctx.epoch + 1, background=True, warm=ctx.model.tokenize)

    def batch(self, ctx: Context, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images and tokens of a batch, augmented when hooks are set."""
        images = ctx.data.float_images(indices)
        if self.image_augment is not None:
            images = self.image_augment(images, ctx.generator("image-augment", ctx.step, ctx.rank))
        captions = [ctx.data.captions[i] for i in indices.tolist()]
        if self.text_augment is not None:
            captions = self.text_augment(captions, ctx.epoch, indices)
        return images.to(ctx.device, non_blocking=True), ctx.tokens(indices, captions)

    def loss(self, ctx: Context, pass_name: str, model: torch.nn.Module, indices: torch.Tensor):
        images, tokens = self.batch(ctx, indices)
        image_features, text_features, scale = model(images, tokens)
        image_features, text_features = gather_features(image_features, text_features)
        return clip_loss(image_features, text_features, scale), {}

    def end_epoch(self, ctx: Context) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def identity(self) -> dict:
        return {"objective": self.name, "image_augment": repr(self.image_augment), "text_augment": repr(self.text_augment)}


@dataclass
class TrainResult:
    model: CLIPModel
    history: list[dict]
    seconds: float
    pairs_per_second: float

    def epochs(self) -> list[dict]:
        return [h for h in self.history if h["kind"] == "epoch"]

    def steps(self) -> list[dict]:
        return [h for h in self.history if h["kind"] == "step"]


EpochCallback = Callable[[Context, CLIPModel], dict]


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(model: CLIPModel, data: ImageCaptionSet, objective: Objective | None = None,
          config: TrainConfig | None = None, run_dir: str | Path | None = None,
          callbacks: Sequence[EpochCallback] = (), stop_after_epoch: int | None = None) -> TrainResult:
    """Train ``model`` on ``data`` with ``objective`` (default: plain CLIP); on the CPU with ``config.threads``
    threads when set (:func:`clipguard.utils.cpu_threads`). See :func:`_train`."""
    config = config or TrainConfig()
    on_cpu = _pick_device(config.device).type == "cpu"
    sparse = config.sparse_embedding and on_cpu and _distributed()[1] == 1
    with cpu_threads(config.threads if on_cpu else None), sparse_embedding_grads(model, enabled=sparse):
        return _train(model, data, objective, config, run_dir, callbacks, stop_after_epoch)


def _train(model: CLIPModel, data: ImageCaptionSet, objective: Objective | None = None,
           config: TrainConfig | None = None, run_dir: str | Path | None = None,
           callbacks: Sequence[EpochCallback] = (), stop_after_epoch: int | None = None) -> TrainResult:
    """Train ``model`` on ``data`` with ``objective`` (default: plain CLIP).

    With ``run_dir`` a checkpoint (model, optimiser, objective state, history) is written atomically after an
    epoch once ``config.checkpoint_seconds`` have passed since the last one (and always before ``stop_after_epoch``
    ends the run early), and training resumes from it: an interrupted run continued later ends with the same
    weights as an uninterrupted one, having redone at most that much work. A checkpoint of the tiny model and its
    optimiser is about 40 MB, so writing one after each of a short run's epochs cost about 3% of the run (a
    tenth of a second an epoch). Metrics go to ``run_dir/metrics.jsonl`` after every epoch. Under ``torchrun`` each
    process takes its shard of every global batch and the contrastive loss sees the all-gathered features.
    """
    config = config or TrainConfig()
    objective = objective or ClipObjective()
    if data.captions is None:
        raise ValueError(f"{data.name} has no captions; CLIP training needs image–caption pairs")
    rank, world = _distributed()
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must divide evenly over {world} processes")
    device = _pick_device(config.device)
    model.to(device)
    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, config, device)
    steps_per_epoch = len(data) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{data.name}: {len(data)} pairs is fewer than one batch of {config.batch_size}")
    total_steps = steps_per_epoch * config.epochs
    ctx = Context(data, model, config, device, rank=rank, world_size=world)
    history: list[dict] = []
    start_epoch, seconds, pairs_seen = 1, 0.0, 0
    last_checkpoint = time.perf_counter()

    run_dir = Path(run_dir) if run_dir is not None else None
    checkpoint_path = run_dir / "checkpoint.pt" if run_dir is not None else None
    if checkpoint_path is not None and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        objective.load_state_dict(state["objective"])
        for callback, callback_state in zip(callbacks, state.get("callbacks", [])):
            if hasattr(callback, "load_state_dict"):
                callback.load_state_dict(callback_state)
        history, start_epoch = state["history"], state["epoch"] + 1
        ctx.step, seconds, pairs_seen = state["step"], state["seconds"], state["pairs_seen"]

    use_amp = config.amp and device.type == "cuda"
    for epoch in range(start_epoch, config.epochs + 1):
        if stop_after_epoch is not None and epoch > stop_after_epoch:
            break
        ctx.epoch = epoch
        model.train()
        started = time.perf_counter()
        passes = objective.plan_epoch(ctx)
        batches_in_epoch = max(1, sum(len(p.indices) // config.batch_size for p in passes))
        done = 0
        bar = tqdm(total=batches_in_epoch, desc=f"{objective.name} epoch {epoch}/{config.epochs}",
                   disable=not config.progress or rank != 0, leave=False)
        for pass_number, plan in enumerate(passes):
            order = plan.indices[torch.randperm(len(plan.indices), generator=ctx.generator("shuffle", pass_number))]
            for b in range(len(order) // config.batch_size):
                batch = order[b * config.batch_size:(b + 1) * config.batch_size]
                local = batch.chunk(world)[rank] if world > 1 else batch
                base = plan.lr if plan.lr is not None else config.lr
                progress = (epoch - 1 + done / batches_in_epoch) * steps_per_epoch
                if config.shifted_schedule:
                    progress += steps_per_epoch
                lr = base if plan.constant_lr else cosine_lr(progress, base, config.warmup_steps, total_steps)
                if hasattr(objective, "learning_rate"):  # an objective with its own schedule (per phase)
                    lr = objective.learning_rate(ctx, plan, lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss, extra = objective.loss(ctx, plan.name, net, local)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}, step {ctx.step} "
                                             f"({plan.name}); lower the learning rate or check the data")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                model.clamp_logit_scale(config.max_logit_scale)
                ctx.step += 1
                done += 1
                pairs_seen += len(batch)
                bar.update(1)
                if ctx.step % config.log_every == 0 or done == batches_in_epoch:
                    record = {"kind": "step", "step": ctx.step, "epoch": epoch, "pass": plan.name,
                              "loss": float(loss.detach()), "lr": lr,
                              "logit_scale": float(model.logit_scale.detach().exp())}
                    record.update({k: float(v) for k, v in extra.items()})
                    history.append(record)
                    bar.set_postfix(loss=f"{record['loss']:.3f}")
        bar.close()
        epoch_seconds = time.perf_counter() - started
        seconds += epoch_seconds
        summary = {"kind": "epoch", "epoch": epoch, "step": ctx.step, "seconds": epoch_seconds,
                   "pairs_per_second": sum(len(p.indices) // config.batch_size for p in passes) * config.batch_size
                   / max(epoch_seconds, 1e-9)}
        epoch_losses = [h["loss"] for h in history if h["kind"] == "step" and h["epoch"] == epoch]
        if epoch_losses:
            summary["loss"] = sum(epoch_losses) / len(epoch_losses)
        summary.update(objective.end_epoch(ctx))
        model.eval()
        for callback in callbacks:
            summary.update(callback(ctx, model))
        history.append(summary)
        if run_dir is not None and rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            if epoch == stop_after_epoch or time.perf_counter() - last_checkpoint >= config.checkpoint_seconds:
                atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                   "objective": objective.state_dict(), "history": history, "epoch": epoch,
                                   "callbacks": [c.state_dict() if hasattr(c, "state_dict") else {}
                                                 for c in callbacks],
                                   "step": ctx.step, "seconds": seconds, "pairs_seen": pairs_seen}, checkpoint_path)
                last_checkpoint = time.perf_counter()
            atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        if world > 1:
            dist.barrier()
    model.eval()
    return TrainResult(model, history, seconds, pairs_seen / max(seconds, 1e-9))
