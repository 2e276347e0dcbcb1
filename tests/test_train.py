import math

import pytest
import torch

from clipguard import data, models
from clipguard.train import ClipObjective, TrainConfig, cosine_lr, parameter_groups, train


def test_cosine_schedule_values():
    assert cosine_lr(0, 1.0, 10, 110) == pytest.approx(0.1)
    assert cosine_lr(9, 1.0, 10, 110) == pytest.approx(1.0)
    assert cosine_lr(10, 1.0, 10, 110) == pytest.approx(1.0)
    assert cosine_lr(60, 1.0, 10, 110) == pytest.approx(0.5)
    assert cosine_lr(110, 1.0, 10, 110) == pytest.approx(0.0, abs=1e-12)
    # the released code's one-epoch shift evaluates past the end: the cosine rises again
    assert cosine_lr(130, 1.0, 10, 110) > cosine_lr(110, 1.0, 10, 110)


def test_weight_decay_exclusions():
    model = models.build_model("clipguard-tiny")
    decay_ids = {id(p) for p in parameter_groups(model, 0.1)[1]["params"]}
    for name, param in model.named_parameters():
        excluded = param.ndim < 2 or any(t in name for t in ("bn", "ln", "bias", "logit_scale"))
        assert (id(param) not in decay_ids) == excluded, name
    assert "clip.logit_scale" in dict(model.named_parameters())


def _small():
    return data.fashion_mnist("train", n=256, seed=0)


def _config(**kw):
    return TrainConfig(**{"epochs": 2, "batch_size": 64, "lr": 2e-3, "warmup_steps": 2, "progress": False, **kw})


def test_training_is_deterministic_and_reduces_loss():
    dataset = _small()
    a = train(models.build_model("clipguard-tiny", seed=0), dataset, config=_config(epochs=3))
    b = train(models.build_model("clipguard-tiny", seed=0), dataset, config=_config(epochs=3))
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    losses = [e["loss"] for e in a.epochs()]
    assert losses[-1] < losses[0]
    assert math.exp(a.model.logit_scale.item()) <= 100.0 + 1e-4


def test_resume_after_interruption_gives_identical_weights(tmp_path):
    dataset = _small()
    uninterrupted = train(models.build_model("clipguard-tiny", seed=1), dataset, config=_config())
    first = train(models.build_model("clipguard-tiny", seed=1), dataset, config=_config(), run_dir=tmp_path,
                  stop_after_epoch=1)
    assert len(first.epochs()) == 1 and (tmp_path / "checkpoint.pt").exists()
    resumed = train(models.build_model("clipguard-tiny", seed=1), dataset, config=_config(), run_dir=tmp_path)
    for (name, pa), pb in zip(uninterrupted.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert [e["epoch"] for e in resumed.epochs()] == [1, 2]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert sum('"kind": "epoch"' in line for line in lines) == 2


def test_row_sparse_embedding_updates_give_the_dense_adamw_weights(tmp_path):
    """clipguard.optim: the token embedding's sparse gradient and row-wise AdamW end bit for bit where dense fused
    AdamW does, also across a resume (the rows seen so far are rebuilt from the optimiser's moments); the switch
    is not part of a run's key, and the model's embedding is dense again after training."""
    dataset = _small()
    dense = train(models.build_model("clipguard-tiny", seed=2), dataset, config=_config(sparse_embedding=False))
    model = models.build_model("clipguard-tiny", seed=2)
    sparse = train(model, dataset, config=_config())
    assert not model.clip.token_embedding.sparse
    train(models.build_model("clipguard-tiny", seed=2), dataset, config=_config(), run_dir=tmp_path, stop_after_epoch=1)
    resumed = train(models.build_model("clipguard-tiny", seed=2), dataset, config=_config(), run_dir=tmp_path)
    for run in (sparse, resumed):
        for (name, pa), pb in zip(dense.model.state_dict().items(), run.model.state_dict().values()):
            assert torch.equal(pa, pb), name
    assert _config(sparse_embedding=False).identity() == _config().identity()


def test_row_sparse_adamw_matches_torch_on_random_sparse_gradients():
    """Known answer: random tables, random token batches with repeats, two weight-decay groups, 30 steps."""
    from clipguard.optim import RowSparseAdamW

    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(500, 8, generator=generator), torch.randn(300, 4, generator=generator)]
    tables = {kind: [torch.nn.Parameter(t.clone()) for t in start] for kind in ("dense", "sparse")}
    optimisers = {kind: (torch.optim.AdamW if kind == "dense" else RowSparseAdamW)(
        [{"params": [ts[0]], "weight_decay": 0.1}, {"params": [ts[1]], "weight_decay": 0.0}], lr=1e-2, fused=True)
        for kind, ts in tables.items()}
    for step in range(30):
        tokens = [torch.randint(0, min(len(t), 40 + 10 * step), (64,), generator=generator) for t in start]
        for kind, ts in tables.items():
            optimisers[kind].zero_grad(set_to_none=True)
            loss = sum((torch.nn.functional.embedding(tok, t, sparse=kind == "sparse") ** 2).sum() * (i + 1)
                       for i, (tok, t) in enumerate(zip(tokens, ts)))
            loss.backward()
            optimisers[kind].step()
    for a, b in zip(tables["dense"], tables["sparse"]):
        assert torch.equal(a, b)
    state = {kind: optimisers[kind].state[ts[0]] for kind, ts in tables.items()}
    assert all(torch.equal(state["dense"][k], state["sparse"][k]) for k in ("step", "exp_avg", "exp_avg_sq"))


def test_checkpoints_are_written_by_elapsed_time_not_after_every_epoch(tmp_path):
    """A short run writes no checkpoint (its history still goes to metrics.jsonl every epoch); a zero interval
    writes one after every epoch; neither the interval nor a checkpoint changes the weights or the run's key."""
    dataset = _small()
    short = train(models.build_model("clipguard-tiny", seed=1), dataset, config=_config(checkpoint_seconds=1e9),
                  run_dir=tmp_path / "short")
    assert not (tmp_path / "short" / "checkpoint.pt").exists()
    assert sum('"kind": "epoch"' in line for line in (tmp_path / "short" / "metrics.jsonl").read_text().splitlines()) == 2
    every = train(models.build_model("clipguard-tiny", seed=1), dataset, config=_config(checkpoint_seconds=0),
                  run_dir=tmp_path / "every")
    assert torch.load(tmp_path / "every" / "checkpoint.pt", weights_only=True)["epoch"] == 2
    for (name, pa), pb in zip(short.model.state_dict().items(), every.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    assert _config(checkpoint_seconds=0).identity() == _config().identity()
    with pytest.raises(ValueError, match="checkpoint_seconds"):
        _config(checkpoint_seconds=-1)


def test_logit_scale_is_clamped():
    model = models.build_model("clipguard-tiny")
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_logit_scale(100.0)
    assert float(model.logit_scale.detach().exp()) == pytest.approx(100.0, rel=1e-5)


def test_non_finite_loss_stops_with_a_clear_error():
    class Broken(ClipObjective):
        def loss(self, ctx, pass_name, model, indices):
            loss, extra = super().loss(ctx, pass_name, model, indices)
            return loss * float("nan"), extra

    with pytest.raises(FloatingPointError, match="non-finite loss"):
        train(models.build_model("clipguard-tiny"), _small(), Broken(), _config(epochs=1))


def test_bad_config_is_rejected():
    with pytest.raises(ValueError):
        TrainConfig(lr=float("nan"))
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(models.build_model("clipguard-tiny"), _small().subset(range(10)), config=_config())


def test_model_rejects_wrong_image_size():
    model = models.build_model("clipguard-tiny")
    with pytest.raises(ValueError, match="32px"):
        model.encode_image(torch.rand(2, 3, 28, 28))


def test_per_pair_tracker_survives_a_resume(tmp_path):
    """The tracker's records are in the checkpoint: after a resume per_sample.npz holds every epoch, numbered."""
    import numpy as np

    from clipguard.evaluate import PerSampleTracker

    dataset = _small()
    straight = PerSampleTracker(dataset)
    train(models.build_model("clipguard-tiny", seed=2), dataset, config=_config(), callbacks=[straight])
    first = PerSampleTracker(dataset)
    train(models.build_model("clipguard-tiny", seed=2), dataset, config=_config(), run_dir=tmp_path,
          callbacks=[first], stop_after_epoch=1)
    resumed = PerSampleTracker(dataset)  # a new process: empty until the checkpoint restores it
    train(models.build_model("clipguard-tiny", seed=2), dataset, config=_config(), run_dir=tmp_path,
          callbacks=[resumed])
    resumed.save(tmp_path / "per_sample.npz")
    with np.load(tmp_path / "per_sample.npz") as saved:
        assert saved["epochs"].tolist() == [1, 2]
        for row, epoch in enumerate((1, 2)):
            assert np.array_equal(saved["loss"][row], straight.records[epoch][1].numpy())


def test_captions_prepared_ahead_train_the_same_weights_as_augmenting_in_the_step():
    from clipguard.augment import CaptionAugmenter

    dataset = _small()
    ahead = CaptionAugmenter(seed=3)
    in_step = CaptionAugmenter(seed=3)

    def unprepared(captions, epoch, indices):  # the same hook without prepare_epoch: EDA inside each step
        return in_step(captions, epoch, indices)

    runs = [train(models.build_model("clipguard-tiny", seed=0), dataset, objective=ClipObjective(text_augment=hook),
                  config=_config(epochs=3)) for hook in (ahead, unprepared)]
    assert ahead._prepared, "the objective prepared no epoch ahead"
    for (name, pa), pb in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().values()):
        assert torch.equal(pa, pb), name


def test_a_run_pinned_to_one_thread_trains_on_one_whatever_the_process_uses():
    """The book's profiles train every run on one CPU thread, in a one-thread lane or in a notebook run alone, so
    both give the same numbers (the thread count changes the order float sums add up in)."""
    from clipguard import experiments, profiles

    with pytest.raises(ValueError, match="threads"):
        TrainConfig(threads=0)
    assert experiments.clip_spec("cpu")["train"]["threads"] == 1 == profiles.resolve("smoke").cpu_threads
    assert experiments.clip_spec("gpu")["train"]["threads"] is None
    dataset = data.fashion_mnist("train", n=128, seed=0)
    seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = TrainConfig(epochs=1, batch_size=64, threads=1, progress=False, device="cpu")
        train(models.build_model("clipguard-tiny", seed=0), dataset, config=config,
              callbacks=[lambda ctx, model: seen.append(torch.get_num_threads()) or {}])
        assert seen == [1] and torch.get_num_threads() == 2  # pinned while training, restored afterwards
    finally:
        torch.set_num_threads(before)
