"""`make gpu-check` (experiments/gpu_check.py) on the CPU at tiny sizes, so it cannot rot on
machines without CUDA. A subprocess: its 1-device DDP run sets process-wide distributed
state and environment variables."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for var in ("WORLD_SIZE", "LOCAL_RANK", "RANK", "MASTER_PORT"):
        env.pop(var, None)
    return subprocess.run([sys.executable, str(REPO / "experiments" / "gpu_check.py"), *args],
                          env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=900)


@pytest.mark.slow
@pytest.mark.serial
def test_gpu_check_runs_every_family_on_cpu():
    out = _gpu_check("--steps", "2")
    assert out.returncode == 0, out.stdout[-5000:]
    assert "CPU (no CUDA: tiny sizes" in out.stdout
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("| ")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:4] == ["family", "fp32 ms/step", "fp32 peak MB", "fp32 loss"]
    assert {"bf16 ms/step", "DDP(1)", "agree"} <= set(header)
    rows = {ln.split("|")[1].strip(): [c.strip() for c in ln.strip("|").split("|")]
            for ln in lines[1:]}
    assert set(rows) == {"RealNVP", "Glow", "MAF", "NSF", "FFJORD", "FFJORD multiscale",
                         "Residual Flow", "VAE", "VI"}
    for family, cells in rows.items():
        assert "FAIL" not in cells, (family, cells)
        assert float(cells[1]) > 0 and float(cells[2]) > 0  # ms/step, peak MB
        assert cells[header.index("DDP(1)")] == "ok" and cells[header.index("agree")] == "ok"


def test_gpu_check_refuses_an_unknown_family():
    out = _gpu_check("--only", "NoSuchFlow")
    assert out.returncode == 2 and "unknown families ['nosuchflow']" in out.stdout
