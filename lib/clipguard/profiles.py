"""Compute profiles: one switch (``smoke`` / ``cpu`` / ``gpu``) sets every size a notebook uses.

``smoke`` checks that a notebook runs (seconds); ``cpu`` is the book's default (2 cores; the budget for the whole
book is 60 minutes, the README gives the measured time); ``gpu`` is for a lent accelerator (more data, a larger
model, more seeds).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

__all__ = ["Profile", "PROFILES", "resolve"]


@dataclass(frozen=True)
class Profile:
    name: str
    dataset: str          # training data: "fashion-mnist" or "shapes"
    n_train: int          # training pairs
    n_test: int           # labelled test images for zero-shot / ASR
    n_probe_train: int    # labelled images the linear probe trains on
    epochs: int
    batch_size: int
    lr: float
    warmup_steps: int
    model: str
    image_size: int
    seeds: int            # seeds per compared configuration
    cpu_threads: int | None = None  # threads a run trains and evaluates on, on the CPU (None: the process's)

    def as_dict(self) -> dict:
        return asdict(self)

    def __post_init__(self) -> None:
        test_rows = {"fashion-mnist": 10000}.get(self.dataset)
        if test_rows is not None and self.n_test >= test_rows:
            raise ValueError(f"profile {self.name!r}: n_test={self.n_test} leaves no held-out {self.dataset} test "
                             f"images for targeted attacks (the split has {test_rows})")


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", "fashion-mnist", n_train=1024, n_test=500, n_probe_train=1000, epochs=1,
                     batch_size=128, lr=2e-3, warmup_steps=4, model="clipguard-tiny", image_size=32, seeds=1,
                     cpu_threads=1),
    "cpu": Profile("cpu", "fashion-mnist", n_train=10000, n_test=2000, n_probe_train=5000, epochs=8,
                   batch_size=128, lr=2e-3, warmup_steps=50, model="clipguard-tiny", image_size=32, seeds=3,
                   cpu_threads=1),
    # cpu_threads=1: every run trains on one thread, as in the book's lanes (two notebooks at a time on two cores),
    # also when a notebook runs alone, so both give the same numbers (benchmarks/thread_sensitivity.py)
    # n_test leaves 2,000 test images held out for targeted attacks' targets (10,000 left none), and n_train leaves
    # 10,000 training images for clean fine-tuning sets disjoint from the pre-training set (CleanCLIP)
    "gpu": Profile("gpu", "fashion-mnist", n_train=50000, n_test=8000, n_probe_train=20000, epochs=20,
                   batch_size=512, lr=1e-3, warmup_steps=200, model="clipguard-small", image_size=64, seeds=3),
}


def resolve(profile: str, **overrides: object) -> Profile:
    """The named profile with ``overrides`` applied (``None`` means "keep the profile's value").

    Unknown profile names and unknown fields fail loudly."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    base = PROFILES[profile]
    unknown = set(overrides) - set(base.as_dict())
    if unknown:
        raise ValueError(f"unknown profile field(s) {sorted(unknown)}; known: {sorted(base.as_dict())}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
