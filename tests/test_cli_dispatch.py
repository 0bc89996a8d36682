"""`cnf` entry point (cnf/__main__.py): subcommand dispatch; cnf.cli: run names shared by all processes."""

import os
import time

import pytest

from cnf.__main__ import SUBCOMMANDS, main
from cnf.cli import default_run_name
from cnf.errors import ConfigError


def test_timestamp_name_is_exported_for_child_ranks(monkeypatch):
    monkeypatch.delenv("CNF_RUN_NAME", raising=False)
    monkeypatch.delenv("CNF_RUN_NAME_OWNER", raising=False)
    for var in ("WORLD_SIZE", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"):
        monkeypatch.delenv(var, raising=False)
    name = default_run_name()
    assert os.environ["CNF_RUN_NAME"] == name
    assert os.environ["CNF_RUN_NAME_OWNER"] == str(os.getpid())
    # a child started by this process (Lightning's DDP launcher) reuses it
    child_env = {"CNF_RUN_NAME": name, "CNF_RUN_NAME_OWNER": str(os.getppid())}
    assert default_run_name(child_env) == name
    # a second run in the same process gets a new name (timestamps have 1 ms resolution)
    time.sleep(0.002)
    assert default_run_name({"CNF_RUN_NAME": name, "CNF_RUN_NAME_OWNER": str(os.getpid())}) != name


def test_names_under_torchrun_and_slurm():
    assert default_run_name({"CNF_RUN_NAME": "mine"}) == "mine"
    assert default_run_name({"WORLD_SIZE": "8", "TORCHELASTIC_RUN_ID": "abc"}) == "torchrun-abc"
    assert default_run_name({"SLURM_NTASKS": "4", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"}) == "slurm-77.0"
    with pytest.raises(ConfigError, match="--run.name"):
        default_run_name({"WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "none"})


def test_dispatch_to_our_subcommands(capsys, tmp_path):
    assert set(SUBCOMMANDS) >= {"compare", "report"}
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "missing")])
    assert exc.value.code == 2
    assert "cnf report: error: runs folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tmp_path / "nope.yaml")])
    assert exc.value.code == 2 and "suite file" in capsys.readouterr().err


def test_compile_switch_compiles_the_flow_before_fit(tmp_path, monkeypatch):
    import torch

    from .helpers import run_cli

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *a, **k: compiled.append(type(self).__name__))
    run_cli(tmp_path, "fit", "toy_realnvp", "--run.compile", "true", "--run.test_after_fit",
            "false", "--trainer.max_steps", "2", "--data.init_args.n_train", "1024",
            "--data.init_args.n_val", "500", "--data.init_args.n_test", "500")
    assert compiled == ["RealNVP"]


def test_compile_switch_refuses_continuous_flows(tmp_path):
    from cnf.errors import ConfigError

    from .helpers import run_cli

    with pytest.raises(ConfigError, match="continuous flows"):
        run_cli(tmp_path, "fit", "toy_ffjord", "--run.compile", "true",
                "--trainer.max_steps", "1", "--data.init_args.n_train", "1024")


def test_evaluate_is_a_cnf_subcommand(tmp_path, capsys):
    from tests.helpers import run_cli

    fit = run_cli(tmp_path, "fit", "toy_realnvp", "--trainer.max_steps", "20",
                  "--trainer.val_check_interval", "10", "--data.init_args.n_train", "2000",
                  "--data.init_args.n_test", "1000")
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "exact", str(fit.run_dir)])
    assert exc.value.code == 0
    assert "nll" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", "exact", str(tmp_path / "no_such_run")])
    assert exc.value.code != 0
