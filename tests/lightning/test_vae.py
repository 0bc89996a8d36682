"""cnf/lightning/vae.py: training lowers the -ELBO; warm-up; the CLI writes the VAE metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from cnf.cli import run
from cnf.data.binarized import BinarizedDataModule
from cnf.lightning.vae import VAE
from cnf.vae import FlowVAE

ROOT = Path(__file__).resolve().parents[2]


def test_warmup_schedule():
    m = VAE(FlowVAE(64, 4, hidden=8), kl_warmup_steps=100)
    assert m.beta(0) == 0 and m.beta(50) == 0.5 and m.beta(500) == 1
    assert VAE(FlowVAE(64, 4, hidden=8)).beta(0) == 1


def test_training_lowers_the_neg_elbo(tmp_path):
    """Measured: val -ELBO 45.1 nats at init -> 25.6 after 150 steps (seed 0, planar K=2)."""
    torch.manual_seed(0)
    module = VAE(FlowVAE(64, 4, hidden=64, depth=1, posterior="planar", num_flows=2),
                 eval_samples=2, iw_samples=20)
    dm = BinarizedDataModule("digits", batch_size=100)
    trainer = L.Trainer(max_steps=150, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/neg_elbo"]
    trainer.fit(module, datamodule=dm)
    after = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/neg_elbo"]
    test = trainer.test(module, datamodule=dm, verbose=False)[0]
    assert before > 40 and after < 30
    assert test["test/nll_iw"] < test["test/neg_elbo"]
    assert abs(test["test/recon"] + test["test/kl"] - test["test/neg_elbo"]) < 1e-4


@pytest.mark.slow
def test_cli_vae_run(tmp_path):
    cfg = ROOT / "configs" / "experiment" / "vae_sylvester_orthogonal.yaml"
    run(["fit", "--config", str(cfg), "--trainer.max_steps", "40",
         "--trainer.val_check_interval", "20", "--model.init_args.iw_samples", "10",
         "--run.root", str(tmp_path), "--run.name", "t", "--run.wandb", "disabled"])
    summary = json.loads((tmp_path / "vae_sylvester_orthogonal" / "t" / "summary.json").read_text())
    m = summary["metrics"]
    for key in ("val/neg_elbo", "test/neg_elbo", "test/kl", "test/recon", "test/nll_iw"):
        assert math.isfinite(m[key]), key
    assert summary["data"] == "digits" and summary["best_monitor"] == "val/neg_elbo"
