"""DDP through torchrun: 2 CPU processes (gloo) give the same weights as 1 process on the same global batch."""

import subprocess
import sys

import pytest
import torch


def _train(tmp_path, nproc):
    out = tmp_path / f"np{nproc}"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(29500 + nproc), "-m", "clipguard.train_cli", "--profile", "smoke", "--n-train", "512",
               "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300,
                            env={"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out / "model.pt", weights_only=True)


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    single = _train(tmp_path, 1)
    double = _train(tmp_path, 2)
    for name, value in single.items():
        other = double[name]
        if name.endswith("attn.in_proj_bias"):
            # The key bias has an exactly-zero true gradient (softmax is shift-invariant per query), so Adam turns
            # round-off noise into lr-sized steps there; compare the query and value biases only.
            third = len(value) // 3
            value, other = torch.cat([value[:third], value[2 * third:]]), torch.cat([other[:third], other[2 * third:]])
        assert torch.allclose(value, other, atol=1e-5, rtol=1e-4), name
