"""Line progress for logs/CI and the wall-clock metric (cnf/lightning/progress.py)."""

import io
import re

import lightning as L

from cnf.data.toy import ToyDataModule
from cnf.distributions import Density, StandardNormal
from cnf.flows.coupling import RealNVP
from cnf.lightning import DensityEstimation
from cnf.lightning.progress import ElapsedTime, LineProgressBar, format_duration


def test_format_duration():
    assert [format_duration(s) for s in (4.4, 185, 3720)] == ["4s", "3m05s", "1h02m"]


def test_line_progress_is_compact_and_complete(tmp_path):
    stream = io.StringIO()
    bar = LineProgressBar(stream=stream)
    clock = ElapsedTime()
    model = DensityEstimation(Density(RealNVP(2, num_layers=2, hidden=16), StandardNormal(2)))
    dm = ToyDataModule("8gaussians", n_train=2048, n_val=500, n_test=500, batch_size=64)
    trainer = L.Trainer(max_steps=40, val_check_interval=20, check_val_every_n_epoch=None,
                        callbacks=[bar, clock],
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        default_root_dir=tmp_path, num_sanity_val_steps=0, log_every_n_steps=5)
    trainer.fit(model, dm)
    assert trainer.callback_metrics["time/elapsed_s"] > 0
    trainer.test(model, dm)
    lines = stream.getvalue().splitlines()
    steps = [ln for ln in lines if re.match(r"\[fit\] step \d+/40", ln)]
    # every max_steps/20 = 2 steps (+ step 1): about 20 lines, never one per step
    assert 18 <= len(steps) <= 22
    assert steps[-1].startswith("[fit] step 40/40 100% | loss ")
    assert "ms/step" in steps[-1] and "ETA 0s" in steps[-1] and "val/nll" in steps[-1]
    assert sum(ln.startswith("[fit] validation at step") for ln in lines) == 2
    assert any(ln.startswith("[fit] done: 40 steps") for ln in lines)
    assert lines[-1].startswith("[test] test/nll ")
    assert "\r" not in stream.getvalue()
