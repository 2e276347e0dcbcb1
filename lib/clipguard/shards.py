"""Image–caption data that does not fit in memory: streamed from webdataset tar shards (the img2dataset/CC3M
layout, ``KEY.jpg`` + ``KEY.txt`` [+ ``KEY.json``]), trained on, and poisoned shard by shard.

:class:`ShardStream` is a torch ``IterableDataset`` built from webdataset's own stages: the shard list, split by
rank then by DataLoader worker, read as samples, shuffled through a bounded buffer, decoded and resized in the
worker (with :func:`clipguard.data.decode_webdataset_sample`, so pixels and content keys equal
:func:`clipguard.data.load_webdataset`'s). It yields ``(image uint8 [3, S, S], caption, sample key)``.

* **Exactly once.** Every epoch the shard list is put in one order (a function of ``seed`` and ``epoch`` only, so all
  ranks agree); shard ``i`` of that order goes to rank ``i % world_size`` and the ``j``-th shard of a rank to its
  DataLoader worker ``j % num_workers``. Each shard is read by one (rank, worker), so no pair is seen twice in an
  epoch, and every pair is seen once when every worker reads to its end. The rank split is ``islice`` as in
  ``wds.split_by_node``, but with ``rank``/``world_size`` passed in (``split_by_node`` reads them from the
  environment or the process group, which tests and tools that plan several ranks from one process do not have).
* **Uneven division.** When the number of shards is not a multiple of ``world_size * num_workers``, nothing is
  dropped or repeated by the dataset: the first ``len(shards) % (world_size * num_workers)`` slots get one shard more
  (and shards can hold different numbers of pairs). :func:`train_streaming` keeps DDP ranks in step by ending an
  epoch when the first rank runs out of full batches; the rest of that epoch's pairs on the other ranks (at most
  about one shard per rank) are not trained on, and which ones they are changes every epoch since the shard order
  does. With DataLoader batching, each worker's last partial batch is dropped as well.
* **Order and resume.** The order is a function of (``seed``, ``epoch``, ``rank``, ``world_size``, worker,
  ``num_workers``, ``shuffle_buffer``) and the shard list: the same arguments give the same sequence, so a run
  resumed at an epoch boundary (:meth:`ShardStream.at_epoch`) continues exactly as if uninterrupted.
* **Memory** is bounded by the shuffle buffer (``shuffle_buffer`` raw samples per worker) and one sample being
  read, independent of the number of shards (``benchmarks/bench_shards.py`` measures it).

:func:`write_poisoned_shards` writes a backdoored copy of a set of shards plus a poison manifest
(:data:`clipguard.attacks.MANIFEST_COLUMNS`), one shard at a time.
"""

from __future__ import annotations

import array
import dataclasses
import io
import itertools
import json
import random
import tarfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import webdataset as wds
from PIL import Image
from webdataset.tariterators import base_plus_ext

from .attacks import BackdoorSpec, PoisonSpecError, apply_to_uint8, make_trigger, manifest_frame, poison_spec, \
    save_manifest
from .data import CLIP_TEMPLATES, DataError, class_of_caption, class_synonyms, content_key, decode_webdataset_sample
from .losses import clip_loss, gather_features
from .models import CLIPModel
from .train import TrainConfig, TrainResult, cosine_lr, make_optimizer
from .utils import atomic_torch_save, atomic_write, atomic_write_text, derive_seed

__all__ = ["ShardStream", "list_shards", "count_samples", "train_streaming", "write_poisoned_shards",
           "PoisonedShards"]


# --------------------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------------------


def list_shards(shards: str | Path | Iterable[str | Path]) -> list[str]:
    """Absolute paths of the shards: a folder (its ``*.tar``, sorted), one ``.tar`` file, or a list. Missing files
    raise a :class:`DataError` naming them (absolute paths also keep webdataset from reading ``pipe:`` names)."""
    if isinstance(shards, (str, Path)):
        path = Path(shards)
        paths = sorted(path.glob("*.tar")) if path.is_dir() else [path]
    else:
        paths = [Path(s) for s in shards]
    if not paths:
        raise DataError(f"no .tar shards in {shards}")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"shard(s) not found: {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    return [str(p.resolve()) for p in paths]


def _raise_shard_error(exn: Exception) -> bool:
    """webdataset error handler: a shard that cannot be read becomes a DataError naming it (webdataset appends the
    shard's path to the exception's arguments); DataErrors from decoding already name the shard and sample."""
    if isinstance(exn, DataError):
        raise exn
    url = next((a for a in reversed(exn.args) if isinstance(a, str) and Path(a).suffix), None)
    detail = "; ".join(str(a) for a in exn.args if isinstance(a, (str, int)) and a != url) or type(exn).__name__
    raise DataError(f"{url or 'a shard'}: unreadable shard ({detail})") from exn


def _warn_and_skip(exn: Exception) -> bool:
    warnings.warn(f"skipped: {exn}", stacklevel=2)
    return True


def _split_by_rank(rank: int, world_size: int):
    """``wds.split_by_node`` with an explicit rank: every ``world_size``-th shard from ``rank``."""
    def split(shards: Iterator[dict]) -> Iterator[dict]:
        return itertools.islice(shards, rank, None, world_size)
    return split


@dataclass
class ShardStream(torch.utils.data.IterableDataset):
    """Image–caption pairs streamed from tar shards for one ``rank`` of ``world_size`` (see the module notes).

    shards: folder, file or list (:func:`list_shards`). image_size: side of the decoded square images (shorter side
    resized bicubic, centre crop). seed, epoch: fix the order. shuffle_buffer: raw samples held per worker for
    shuffling (0 or 1: stream order). shuffle_shards: shuffle the shard list every epoch. on_error: ``raise`` (a bad
    sample or shard raises a :class:`DataError` naming the shard and sample key) or ``skip`` (warn and go on).
    """

    shards: Sequence[str | Path] | str | Path
    image_size: int = 32
    seed: int = 0
    epoch: int = 0
    rank: int = 0
    world_size: int = 1
    shuffle_buffer: int = 1000
    shuffle_shards: bool = True
    on_error: str = "raise"

    def __post_init__(self) -> None:
        self.shards = list_shards(self.shards)
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside 0..{self.world_size - 1}")
        if self.world_size > len(self.shards):
            raise DataError(f"{len(self.shards)} shard(s) cannot feed {self.world_size} ranks: every rank needs one")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")

    def at_epoch(self, epoch: int) -> "ShardStream":
        """The same stream in another epoch (its own shard and sample order)."""
        return dataclasses.replace(self, epoch=epoch)

    def shard_order(self) -> list[str]:
        """This epoch's order of all shards (the same on every rank), before splitting."""
        return [s["url"] for s in wds.SimpleShardList(self.shards, seed=self._shard_seed())]

    def identity(self) -> dict:
        """What fixes the data and its order (without the epoch): checked when a training run resumes."""
        return {"shards": [Path(s).name for s in self.shards], "image_size": self.image_size, "seed": self.seed,
                "world_size": self.world_size, "shuffle_buffer": self.shuffle_buffer,
                "shuffle_shards": self.shuffle_shards}

    def _shard_seed(self) -> int | None:
        return derive_seed(self.seed, self.epoch, "shards") if self.shuffle_shards else None

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str, str]]:
        _, _, worker, _ = wds.utils.pytorch_worker_info()  # the worker id split_by_worker uses
        handler = _raise_shard_error if self.on_error == "raise" else _warn_and_skip
        stages = [wds.SimpleShardList(self.shards, seed=self._shard_seed()),
                  _split_by_rank(self.rank, self.world_size),
                  wds.split_by_worker,
                  wds.tarfile_to_samples(handler=handler)]
        if self.shuffle_buffer > 1:
            rng = random.Random(derive_seed(self.seed, self.epoch, "samples", self.rank, worker))
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        stages.append(wds.map(self._decode, handler=handler))
        return iter(wds.DataPipeline(*stages))

    def _decode(self, sample: dict) -> tuple[torch.Tensor, str, str]:
        key = sample["__key__"]
        image, caption = decode_webdataset_sample(sample, self.image_size, f"{sample['__url__']}, sample {key}")
        return image, caption, key


def _scan(shard: str, captions: bool) -> Iterator[tuple[str, str | None]]:
    """(key, caption or None) of every sample of a shard in stream order, reading only tar headers (and ``.txt``
    members when ``captions``); samples are grouped as webdataset groups them (consecutive members, same key)."""
    try:
        with tarfile.open(shard, "r:") as archive:
            key, caption = None, None
            for member in archive:
                archive.members = []  # keep the header list from growing
                name = member.name
                if not member.isreg() or (name.startswith("__") and name.endswith("__")):
                    continue
                prefix, suffix = base_plus_ext(name)
                if prefix is None:
                    continue
                if prefix != key:
                    if key is not None:
                        yield key, caption
                    key, caption = prefix, None
                if captions and suffix.lower() == "txt":
                    caption = archive.extractfile(member).read().decode("utf-8", errors="replace").strip()
            if key is not None:
                yield key, caption
    except (OSError, tarfile.TarError) as error:
        raise DataError(f"{shard}: unreadable shard ({error})") from error


def count_samples(shards: str | Path | Iterable[str | Path]) -> list[int]:
    """Number of samples in each shard (headers only; memory independent of the shard size)."""
    return [sum(1 for _ in _scan(s, captions=False)) for s in list_shards(shards)]


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


def _process_group() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_ranks_have(batch: object, device: torch.device, world_size: int) -> bool:
    """True while every rank still has a batch (one small all-reduce per step keeps DDP ranks in step)."""
    if world_size == 1:
        return batch is not None
    flag = torch.tensor([int(batch is not None)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def train_streaming(model: CLIPModel, dataset: ShardStream, config: TrainConfig | None = None,
                    run_dir: str | Path | None = None, *, num_workers: int = 0,
                    samples_per_epoch: int | None = None, stop_after_epoch: int | None = None) -> TrainResult:
    """Plain CLIP training (Eq. 1) on a :class:`ShardStream`, epochs ``1..config.epochs``.

    ``config.batch_size`` is the global batch: each of the ``world_size`` processes (``dataset.rank`` must be this
    process's rank) takes ``batch_size / world_size`` pairs per step, and the loss sees the all-gathered features.
    Images are decoded in ``num_workers`` DataLoader workers. The learning rate follows warm-up + cosine over
    ``samples_per_epoch // batch_size`` planned steps per epoch (default: :func:`count_samples`, a header scan);
    an epoch ends when a rank runs out of full batches (module notes). With ``run_dir`` a checkpoint is written
    atomically after every epoch and training resumes from it with the same data order, so an interrupted run ends
    with the same weights as an uninterrupted one (same ``num_workers`` and stream settings; checked).
    """
    config = config or TrainConfig()
    rank, world = _process_group()
    if (rank, world) != (dataset.rank, dataset.world_size):
        raise ValueError(f"dataset is for rank {dataset.rank} of {dataset.world_size}; this process is {rank} of "
                         f"{world}")
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} must divide evenly over {world} processes")
    local_batch = config.batch_size // world
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if config.device == "auto" else config.device)
    model.to(device)
    net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, config, device)
    samples = samples_per_epoch if samples_per_epoch is not None else sum(count_samples(dataset.shards))
    planned = samples // config.batch_size
    if planned == 0:
        raise ValueError(f"{samples} pairs per epoch is fewer than one batch of {config.batch_size}")
    total_steps = planned * config.epochs
    identity = {**dataset.identity(), "num_workers": num_workers, "batch_size": config.batch_size,
                "samples_per_epoch": samples}

    history: list[dict] = []
    start_epoch, step, seconds, pairs_seen = 1, 0, 0.0, 0
    run_dir = Path(run_dir) if run_dir is not None else None
    checkpoint = run_dir / "checkpoint.pt" if run_dir is not None else None
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state["stream"] != identity:
            raise ValueError(f"{checkpoint} was written for other data or settings: {state['stream']} != {identity}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, start_epoch = state["history"], state["epoch"] + 1
        step, seconds, pairs_seen = state["step"], state["seconds"], state["pairs_seen"]

    use_amp = config.amp and device.type == "cuda"
    for epoch in range(start_epoch, config.epochs + 1):
        if stop_after_epoch is not None and epoch > stop_after_epoch:
            break
        model.train()
        started = time.perf_counter()
        loader = torch.utils.data.DataLoader(
            dataset.at_epoch(epoch), batch_size=local_batch, num_workers=num_workers, drop_last=True,
            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(derive_seed(config.seed, epoch)))
        batches, done, loss_sum = iter(loader), 0, torch.zeros((), device=device)
        while _all_ranks_have(batch := next(batches, None), device, world):
            images, captions, _ = batch
            progress = (epoch - 1) * planned + done + (planned if config.shifted_schedule else 0)
            lr = cosine_lr(min(progress, total_steps), config.lr, config.warmup_steps, total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            images = images.to(device, non_blocking=True).float().div_(255.0)
            tokens = model.tokenize(list(captions)).to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                image_features, text_features, scale = net(images, tokens)
                loss = clip_loss(*gather_features(image_features, text_features), scale)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            model.clamp_logit_scale(config.max_logit_scale)
            step, done, pairs_seen = step + 1, done + 1, pairs_seen + config.batch_size
            loss_sum += loss.detach()
            if step % config.log_every == 0:
                history.append({"kind": "step", "step": step, "epoch": epoch, "loss": float(loss.detach()), "lr": lr,
                                "logit_scale": float(model.logit_scale.detach().exp())})
        del batches  # stops the workers
        if done == 0:
            raise ValueError(f"epoch {epoch} gave no full batch of {local_batch} pairs on rank {rank}")
        epoch_seconds = time.perf_counter() - started
        seconds += epoch_seconds
        history.append({"kind": "epoch", "epoch": epoch, "step": step, "steps": done, "seconds": epoch_seconds,
                        "pairs_per_second": done * config.batch_size / max(epoch_seconds, 1e-9),
                        "loss": float(loss_sum) / done})
        if run_dir is not None and rank == 0:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                               "epoch": epoch, "step": step, "seconds": seconds, "pairs_seen": pairs_seen,
                               "stream": identity}, checkpoint)
            atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        if world > 1:
            dist.barrier()
    model.eval()
    return TrainResult(model, history, seconds, pairs_seen / max(seconds, 1e-9))


# --------------------------------------------------------------------------------------------------------------
# Poisoned shards
# --------------------------------------------------------------------------------------------------------------


@dataclass
class PoisonedShards:
    """Result of :func:`write_poisoned_shards`: the written shards (same names as the sources), the manifest (also
    saved at ``manifest_path``), the number of pairs written and the number of poisons asked for."""

    shards: list[Path]
    manifest: pd.DataFrame
    manifest_path: Path
    n_samples: int
    requested: int


def _streamable(spec: dict | BackdoorSpec) -> BackdoorSpec:
    parsed = poison_spec(spec)
    if parsed.kind != "backdoor":
        raise PoisonSpecError("shards take backdoor poisons only: targeted poisons need a labelled held-out set "
                              "(use build_poisoned on an in-memory set)")
    if parsed.source != "train" or parsed.caption_source == "dataset":
        raise PoisonSpecError("shards take source='train' and caption_source 'templates' or 'keep' (drawing "
                              "captions from the whole set needs it in memory)")
    adaptive = {k: getattr(parsed, k) for k, default in _ADAPTIVE_DEFAULTS.items()
                if getattr(parsed, k, default) != default}
    if adaptive:
        raise PoisonSpecError(f"shards do not take the adaptive option(s) {adaptive} yet (use build_poisoned)")
    return parsed


#: Spec options the shard writer does not implement, at the values that mean "off".
_ADAPTIVE_DEFAULTS = {"caption_style": "template", "distinct_captions": None, "duplicates_per_poison": 1}


def _plan(spec: BackdoorSpec, seed: int, shards: list[str], classnames: list[str]) -> tuple[dict, int, int]:
    """First pass over the shards (headers and captions only): choose the poisoned pairs as ``build_poisoned``
    does on the same pairs loaded in memory (same random draws). Returns {stream index: planned row}, the number
    of pairs and the number of poisons asked for. Memory: the plan, plus two bytes per pair for ``keep``."""
    synonyms = spec.synonyms or class_synonyms(classnames)
    templates = spec.templates or CLIP_TEMPLATES
    keep = spec.caption_source == "keep"
    named = array.array("h")  # 'keep': class named by each caption (-1: none), two bytes a pair
    n = 0
    for shard in shards:
        for _, caption in _scan(shard, captions=keep):
            if keep:
                cls = class_of_caption(caption or "", synonyms)
                named.append(-1 if cls is None else cls)
            n += 1
    total = spec.count if spec.count is not None else int(round(spec.rate * n))
    m = len(spec.components)
    counts = [total // m + (i < total % m) for i in range(m)]
    used = np.zeros(0, dtype=np.int64)  # stream indices already poisoned, sorted
    plan: dict[int, dict] = {}
    for ci, (component, count) in enumerate(zip(spec.components, counts)):
        target = classnames.index(component["target_class"])
        rng = np.random.default_rng([int(seed), 100 + ci])
        if keep:
            candidates = np.setdiff1d(np.flatnonzero(np.frombuffer(named, dtype=np.int16) == target), used)
            n_eff = min(count, len(candidates))
            chosen = candidates[rng.choice(len(candidates), size=n_eff, replace=False)] if n_eff else []
            captions = [None] * n_eff  # the source caption, read in the second pass
        else:  # every pair not yet used is a candidate: the p-th of them is p + #(used below it)
            n_eff = min(count, n - len(used))
            positions = rng.choice(n - len(used), size=n_eff, replace=False) if n_eff else np.zeros(0, np.int64)
            chosen = positions + np.searchsorted(used - np.arange(len(used)), positions, side="right")
            captions = [templates[i].format(component["target_class"])
                        for i in rng.integers(0, len(templates), size=n_eff)]
        seeds = [int(s) for s in rng.integers(0, 2 ** 62, size=n_eff)]
        for index, caption, sample_seed in zip((int(i) for i in chosen), captions, seeds):
            plan[index] = {"poison_id": len(plan), "component": ci, "caption": caption, "sample_seed": sample_seed,
                           "trigger": component["trigger"], "target": component["target_class"],
                           "target_label": target}
        used = np.union1d(used, np.asarray(chosen, dtype=np.int64))
    return plan, n, total


def _png(image: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _poison(sample: dict, planned: dict, trigger, spec: BackdoorSpec, image_size: int) -> tuple[dict, dict]:
    """The poisoned sample (PNG + caption under its content key) and its manifest fields, as ``build_poisoned``
    makes them: the source decoded at ``image_size``, triggered with the poison's own generator."""
    image, source_caption = decode_webdataset_sample(sample, image_size, f"{sample['__url__']}, sample "
                                                                         f"{sample['__key__']}")
    generator = torch.Generator().manual_seed(planned["sample_seed"])
    poisoned, state = apply_to_uint8(trigger, image[None], generator, spec.overflow)
    caption = planned["caption"] if planned["caption"] is not None else source_caption
    key = content_key(poisoned[0], caption)
    fields = {"kind": "backdoor", "mode": spec.mode, "source_split": "train",
              "source_key": content_key(image, source_caption), "source_image_key": content_key(image, ""),
              "source_label": -1, "caption": caption, "key": key, "trigger": trigger.name,
              "trigger_params": json.dumps(trigger.params, sort_keys=True),
              "trigger_state": json.dumps({k: int(v[0]) for k, v in state.items()}, sort_keys=True),
              "noise": 0.0, "overflow": spec.overflow, "target_id": -1,
              **{k: planned[k] for k in ("poison_id", "component", "sample_seed", "target", "target_label")}}
    return {"__key__": key, "png": _png(poisoned[0]), "txt": caption}, fields


def write_poisoned_shards(source_shards: str | Path | Iterable[str | Path], spec: dict | BackdoorSpec,
                          out_dir: str | Path, seed: int, image_size: int = 32,
                          classnames: Sequence[str] | None = None) -> PoisonedShards:
    """Write a backdoored copy of ``source_shards`` into ``out_dir`` (one shard per source shard, same name) and its
    poison manifest ``out_dir/manifest.csv`` (:func:`clipguard.attacks.save_manifest` columns).

    Takes backdoor specs with ``source="train"`` and ``caption_source`` ``templates`` or ``keep``, ``insert`` (the
    poison follows its source pair) or ``replace`` mode. Poisons are chosen as :func:`clipguard.attacks.build_poisoned`
    chooses them on the same pairs loaded in memory in stream order (same draws, triggers, captions and content
    keys), given the same ``classnames`` (default: the spec's target classes; they give ``target_label``).
    A poisoned source is decoded at ``image_size``, triggered and written as PNG under its content key (the
    manifest's ``key``; ``row`` is its position in the written stream), so reading the shards at ``image_size``
    gives exactly the triggered pixels. Other samples are copied member for member. Two passes (captions, then
    data); memory: one sample at a time plus the plan.
    """
    parsed = _streamable(spec)
    shards = list_shards(source_shards)
    targets = [c["target_class"] for c in parsed.components]
    classnames = list(classnames) if classnames is not None else list(dict.fromkeys(targets))
    unknown = [t for t in targets if t not in classnames]
    if unknown:
        raise DataError(f"target class(es) {unknown} not in classnames {classnames}")
    out_dir = Path(out_dir)
    clashes = [s for s in shards if (out_dir / Path(s).name).resolve() == Path(s)]
    if clashes:
        raise DataError(f"{clashes[0]}: the output would overwrite its source shard; choose another out_dir")
    plan, n_source, requested = _plan(parsed, int(seed), shards, classnames)
    triggers = [make_trigger(c["trigger"]) for c in parsed.components]
    common = {"seed": int(seed), "spec": json.dumps(parsed.identity(), sort_keys=True)}
    rows, written, index = [], 0, 0

    def write_shard(tmp: Path, shard: str) -> None:
        nonlocal written, index
        samples = wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples(handler=_raise_shard_error))
        with wds.TarWriter(str(tmp), mtime=0.0) as writer:
            for sample in samples:
                planned = plan.get(index)
                index += 1
                if planned is None or parsed.mode == "insert":
                    writer.write({k: v for k, v in sample.items() if k == "__key__" or not k.startswith("__")})
                    written += 1
                if planned is not None:
                    poisoned, fields = _poison(sample, planned, triggers[planned["component"]], parsed, image_size)
                    writer.write(poisoned)
                    rows.append({**fields, **common, "row": written})
                    written += 1

    out_shards = [atomic_write(out_dir / Path(shard).name, lambda tmp, shard=shard: write_shard(tmp, shard))
                  for shard in shards]
    if index != n_source:
        raise DataError(f"the shards changed while being poisoned: {n_source} pairs in the first pass, {index} now")
    manifest = manifest_frame(sorted(rows, key=lambda r: r["poison_id"]))
    manifest_path = save_manifest(manifest, out_dir / "manifest.csv")
    return PoisonedShards(out_shards, manifest, manifest_path, written, requested)
