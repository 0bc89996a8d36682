"""cnf.checkpoint: weights-only loading refuses pickled code unless trusted."""

import os

import pytest
import torch

from cnf.checkpoint import load_checkpoint
from cnf.errors import DataError, UntrustedCheckpointError


class _WritesAFile:
    """Unpickling this runs ``open(path, "w")``: a stand-in for code hidden in a checkpoint."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_plain_checkpoint_loads(tmp_path):
    path = tmp_path / "ok.ckpt"
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "epoch": 2, "name": "x"}, path)
    ckpt = load_checkpoint(path)
    assert torch.equal(ckpt["state_dict"]["w"], torch.arange(3.0)) and ckpt["epoch"] == 2


def test_pickled_code_is_refused_unless_trusted(tmp_path):
    marker = tmp_path / "written_by_pickle"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": _WritesAFile(marker)}, path)
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        load_checkpoint(path, trust_option="--trust-checkpoint")
    with pytest.raises(UntrustedCheckpointError, match="trust=True"):
        load_checkpoint(path)
    assert not marker.exists()
    load_checkpoint(path, trust=True)  # the caller vouched for the file: the pickle runs
    assert marker.exists()
    os.remove(marker)


def test_missing_checkpoint_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.ckpt")


def test_lightning_checkpoint_of_a_run_loads_weights_only(tmp_path):
    from tests.helpers import run_cli

    fit = run_cli(tmp_path, "fit", "toy_realnvp", "--trainer.max_steps", "2",
                  "--trainer.val_check_interval", "2", "--data.init_args.n_train", "256",
                  "--data.init_args.n_test", "128")
    from cnf.rundir import RunDir

    ckpt = load_checkpoint(RunDir(fit.run_dir).checkpoint("last"))
    assert ckpt["state_dict"] and all(isinstance(v, torch.Tensor)
                                      for v in ckpt["state_dict"].values())
    # the same run with a payload slipped into its checkpoint: `cnf evaluate` refuses it
    from cnf import evaluate

    marker = tmp_path / "written_by_pickle"
    ckpt["payload"] = _WritesAFile(marker)
    torch.save(ckpt, RunDir(fit.run_dir).checkpoint("best"))
    with pytest.raises(UntrustedCheckpointError, match="--trust-checkpoint"):
        evaluate.main(["exact", str(fit.run_dir)])
    assert not marker.exists()
