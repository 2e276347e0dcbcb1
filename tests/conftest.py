import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_fashion():
    from clipguard import data

    return data.fashion_mnist("train", n=512, seed=0)


@pytest.fixture
def store(tmp_path):
    from clipguard.runs import RunStore

    return RunStore("smoke", root=tmp_path / "results")
