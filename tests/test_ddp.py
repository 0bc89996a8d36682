"""Multi-process training: a real 2-process CPU DDP fit (gloo) through the `cnf` CLI.

DDP re-runs the command line for the other ranks, so the fit runs as a subprocess of the
CLI, never inside pytest's own process.
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _cnf(args, cwd, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("WANDB_MODE", None)  # W&B offline on: only rank 0 may create a run
    for var in ("CNF_RUN_NAME", "CNF_RUN_NAME_OWNER", "WORLD_SIZE", "LOCAL_RANK", "RANK"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "cnf", *args], cwd=cwd, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


@pytest.mark.slow
def test_ddp_two_processes_agree_with_single_process(tmp_path):
    common = ["--config", str(REPO / "configs/experiment/toy_realnvp.yaml"),
              "--trainer.accelerator", "cpu", "--run.root", "runs", "--run.experiment", "ddp",
              "--data.init_args.n_train", "8192", "--data.init_args.n_test", "4000"]
    out = _cnf(["fit", *common, "--trainer.strategy", "ddp", "--trainer.devices", "2",
                "--trainer.max_steps", "30", "--trainer.val_check_interval", "15",
                "--run.monitor", "null", "--run.wandb", "offline"], tmp_path)
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in out
    # one run directory: both ranks agreed on the (timestamp) run name
    runs = list((tmp_path / "runs" / "ddp").iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["environment"]["world_size"] == 2
    assert summary["steps"] == 30
    # only rank 0 created a W&B run and printed progress / the run directory
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert out.count("[fit] done: 30 steps") == 1 and out.count("cnf: run directory") == 1
    ddp_nll = summary["metrics"]["test/nll"]

    # the same checkpoint evaluated by one process: the test NLL reduced over the two
    # ranks' halves of the test set must equal the single-process NLL on all of it (and
    # would not if the ranks' weights had drifted apart or the reduction were wrong)
    _cnf(["test", "--config", str(run / "config.yaml"), "--ckpt_path",
          str(run / "checkpoints" / "last.ckpt"), "--trainer.strategy", "auto",
          "--trainer.devices", "1", "--run.wandb", "disabled"], tmp_path)
    # the evaluation goes to the run's evals/ folder; the training record stays
    (evaluation,) = (run / "evals").glob("test-*-last")
    single = json.loads((evaluation / "summary.json").read_text())
    assert single["environment"]["world_size"] == 1
    # measured: |difference| 5e-7 (float32 summation order)
    assert single["metrics"]["test/nll"] == pytest.approx(ddp_nll, abs=1e-5)
