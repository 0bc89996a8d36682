"""The training loop of DensityEstimation (cnf/lightning/density.py, base.py) and the batched
loaders of cnf/data/datamodule.py: the speed-ups change no batch, no loss and no logged value,
and a non-finite loss or gradient never reaches the weights."""

import copy
import csv

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cnf.data.datamodule import BatchedTensorDataset, batched_loader
from cnf.data.toy import ToyDataModule
from cnf.distributions import Density, StandardNormal
from cnf.errors import NonFiniteError
from cnf.flows.coupling import RealNVP
from cnf.lightning import DensityEstimation


@pytest.mark.parametrize("shuffle", [True, False])
def test_batched_loader_gives_the_batches_of_tensordataset(shuffle):
    data = torch.randn(203, 3)
    ctx = torch.arange(203.0)[:, None]
    torch.manual_seed(5)
    old = list(DataLoader(TensorDataset(data, ctx), batch_size=32, shuffle=shuffle,
                          drop_last=shuffle))
    torch.manual_seed(5)
    new = list(batched_loader(data, ctx, batch_size=32, shuffle=shuffle, drop_last=shuffle))
    assert len(old) == len(new) == (6 if shuffle else 7)
    for a, b in zip(old, new):
        assert type(a) is type(b) is list and len(b) == 2
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(BatchedTensorDataset(data)[7][0], data[7])


def test_slice_batch_sampler_over_another_sampler_iterates_as_batchsampler():
    # under DDP Lightning rebuilds the batch sampler around a DistributedSampler
    from torch.utils.data import BatchSampler, DistributedSampler

    from cnf.data.datamodule import SliceBatchSampler

    data = BatchedTensorDataset(torch.randn(50, 2))
    dist = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=3)
    ours = [list(map(int, b)) for b in SliceBatchSampler(dist, 8, True)]
    ref = list(BatchSampler(dist, 8, True))
    assert ours == ref and len(ours) == 3


def test_batched_dataset_rejects_unequal_lengths():
    with pytest.raises(ValueError, match="one common length"):
        BatchedTensorDataset(torch.zeros(3, 2), torch.zeros(4))


class _Record(L.Callback):
    def __init__(self):
        self.losses, self.batches = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))
        self.batches.append(batch[0].clone())


def _model(lr=1e-2):
    torch.manual_seed(0)
    density = Density(RealNVP(2, num_layers=4, hidden=16), StandardNormal(2))
    return DensityEstimation(density, optimizer=lambda p: torch.optim.Adam(p, lr=lr))


def _trainer(tmp_path, steps, callbacks, log_every=3, logger=False, **kw):
    return L.Trainer(max_steps=steps, val_check_interval=8, check_val_every_n_epoch=None,
                     callbacks=callbacks, logger=logger, enable_checkpointing=False,
                     enable_model_summary=False, enable_progress_bar=False,
                     default_root_dir=tmp_path, num_sanity_val_steps=0,
                     log_every_n_steps=log_every, inference_mode=False, **kw)


# the lean step (DensityEstimation's own manual optimization) and Lightning's automatic
# optimization, which a trainer that clips gradients gets (a clip this large changes nothing)
MODES = {"lean": {}, "automatic": {"gradient_clip_val": 1e30}}


@pytest.mark.parametrize("mode", list(MODES))
def test_seeded_fit_loss_sequence_equals_a_plain_loop_and_logs_the_same_values(tmp_path, mode):
    model = _model()
    start = copy.deepcopy(model.density.state_dict())
    rec = _Record()
    dm = ToyDataModule("8gaussians", n_train=640, n_val=200, n_test=200, batch_size=64)
    logger = L.pytorch.loggers.CSVLogger(tmp_path, name="", version="v")
    _trainer(tmp_path, 25, [rec], logger=logger, **MODES[mode]).fit(model, dm)
    assert len(rec.losses) == 25 and model.global_step == 25
    assert model.automatic_optimization is (mode == "automatic")

    # the plain loop: same initial weights, same batches, same optimizer
    torch.manual_seed(0)
    density = Density(RealNVP(2, num_layers=4, hidden=16), StandardNormal(2))
    density.load_state_dict(start)
    opt = torch.optim.Adam(density.parameters(), lr=1e-2)
    plain = []
    for x in rec.batches:
        loss = -density.log_prob(x).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        plain.append(float(loss.detach()))
    assert plain == pytest.approx(rec.losses, rel=1e-6, abs=1e-6)
    assert rec.losses[-1] < rec.losses[0] - 0.3  # it learned something

    # train/loss reaches the logger every log_every_n_steps (Lightning's own cadence),
    # with the loss of that very step
    with open(tmp_path / "v" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    logged = {int(r["step"]): float(r["train/loss"]) for r in rows}
    assert sorted(logged) == list(range(2, 25, 3))
    # the last step (max_steps) is not a logging step here, yet its loss is the one kept
    assert float(model.trainer.callback_metrics["train/loss"]) == pytest.approx(rec.losses[-1], rel=1e-6)
    for step, value in logged.items():
        assert value == pytest.approx(rec.losses[step], rel=1e-6)
    assert all(r["train/nll"] and r["time/train_step_s"] for r in rows)
    assert float(model.trainer.callback_metrics["val/nll"]) > 0


@pytest.mark.parametrize("mode", list(MODES))
def test_non_finite_loss_stops_before_the_update(tmp_path, mode):
    model = _model()
    with torch.no_grad():
        first = next(iter(model.density.parameters()))
        first.view(-1)[0] = float("nan")
    before = copy.deepcopy(model.density.state_dict())
    dm = ToyDataModule("8gaussians", n_train=640, n_val=200, n_test=200, batch_size=64)
    with pytest.raises(NonFiniteError, match="training loss became nan at step 0"):
        _trainer(tmp_path, 5, [], **MODES[mode]).fit(model, dm)
    after = model.density.state_dict()
    assert all(torch.equal(before[k], after[k]) or torch.allclose(
        before[k], after[k], equal_nan=True) for k in before)


@pytest.mark.parametrize("mode", list(MODES))
def test_non_finite_gradient_with_a_finite_loss_stops_before_the_update(tmp_path, mode):
    model = _model()
    name, param = next(iter(model.named_parameters()))
    param.register_hook(lambda g: g * float("inf"))
    before = copy.deepcopy(model.state_dict())
    dm = ToyDataModule("8gaussians", n_train=640, n_val=200, n_test=200, batch_size=64)
    with pytest.raises(NonFiniteError, match=rf"non-finite gradients at step 0 in \['{name}'\]"):
        _trainer(tmp_path, 5, [], **MODES[mode]).fit(model, dm)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_huge_but_finite_gradients_are_not_flagged(tmp_path):
    # the total norm overflows float32 here; the per-parameter re-check clears it
    model = _model(lr=0.0)
    next(iter(model.parameters())).register_hook(lambda g: torch.full_like(g, 1e30))
    dm = ToyDataModule("8gaussians", n_train=640, n_val=200, n_test=200, batch_size=64)
    _trainer(tmp_path, 3, []).fit(model, dm)
    assert model.global_step == 3


def test_nan_in_one_gradient_element_is_caught(tmp_path):
    # one NaN among finite gradients: the per-tensor sums must not hide it
    model = _model()
    name, param = next(iter(model.named_parameters()))

    def one_nan(g):
        g = g.clone()
        g.view(-1)[-1] = float("nan")
        return g

    param.register_hook(one_nan)
    before = copy.deepcopy(model.state_dict())
    dm = ToyDataModule("8gaussians", n_train=640, n_val=200, n_test=200, batch_size=64)
    with pytest.raises(NonFiniteError, match=rf"non-finite gradients at step 0 in \['{name}'\]"):
        _trainer(tmp_path, 5, []).fit(model, dm)
    assert all(torch.equal(before[k], model.state_dict()[k]) for k in before)


def _fit_with_scheduler(tmp_path, mode):
    torch.manual_seed(0)
    density = Density(RealNVP(2, num_layers=2, hidden=8), StandardNormal(2))
    model = DensityEstimation(
        density, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5))
    rec = _Record()
    torch.manual_seed(1)
    dm = ToyDataModule("8gaussians", n_train=640, n_val=200, n_test=200, batch_size=64)
    _trainer(tmp_path / mode, 10, [rec], **MODES[mode]).fit(model, dm)
    return model, rec


def test_the_lean_step_steps_the_scheduler_every_step_as_automatic_optimization(tmp_path):
    lean, rec_lean = _fit_with_scheduler(tmp_path, "lean")
    auto, rec_auto = _fit_with_scheduler(tmp_path, "automatic")
    assert not lean.automatic_optimization and auto.automatic_optimization
    for m in (lean, auto):
        assert m.optimizers().param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**2)  # 10 steps
    assert rec_lean.losses == pytest.approx(rec_auto.losses, rel=1e-6, abs=1e-6)


def test_automatic_optimization_where_the_lean_step_does_not_apply(tmp_path):
    # gradient accumulation needs Lightning's loop: 12 batches, 6 optimizer steps
    model = _model()
    dm = ToyDataModule("8gaussians", n_train=640, n_val=200, n_test=200, batch_size=64)
    trainer = _trainer(tmp_path, 6, [], accumulate_grad_batches=2)
    trainer.fit(model, dm)
    assert model.automatic_optimization and model.global_step == 6
    assert trainer.fit_loop.epoch_loop.batch_progress.total.completed == 12

    class OwnStep(DensityEstimation):  # a subclass's own training_step returns the loss
        def training_step(self, batch, batch_idx):
            return super().training_step(batch, batch_idx)

    own = OwnStep(_model().density)
    _trainer(tmp_path, 3, []).fit(own, dm)
    assert own.automatic_optimization and own.global_step == 3
    # an explicit setting wins
    forced = _model()
    forced.automatic_optimization = True
    assert forced.automatic_optimization


@pytest.mark.parametrize("first,then", [("automatic", "lean"), ("lean", "automatic")])
def test_resume_continues_at_the_checkpoint_step_across_optimization_modes(tmp_path, first, then):
    # Lightning counts steps in a different record per mode: a checkpoint of one mode
    # (e.g. written before the lean step existed) resumed in the other continues its count
    dm = ToyDataModule("8gaussians", n_train=640, n_val=200, n_test=200, batch_size=64)
    model = _model()
    trainer = _trainer(tmp_path, 6, [], **MODES[first])
    trainer.fit(model, dm)
    ckpt = tmp_path / "six.ckpt"
    trainer.save_checkpoint(ckpt)
    rec = _Record()
    resumed = _model()
    _trainer(tmp_path, 10, [rec], **MODES[then]).fit(resumed, dm, ckpt_path=ckpt)
    assert resumed.automatic_optimization is (then == "automatic")
    assert resumed.global_step == 10 and len(rec.losses) == 4


def test_cnf_fit_uses_the_null_profiler_unless_a_profiler_is_set(tmp_path):
    from lightning.pytorch.profilers import SimpleProfiler

    from cnf.cli import run
    from cnf.lightning.callbacks import NullProfiler
    from tests.conftest import REPO

    ctx = NullProfiler().profile("a")
    with ctx, NullProfiler().profile("b") as inner:  # reusable, nestable, no value
        assert inner is None
    args = ["fit", "--config", str(REPO / "configs/experiment/toy_realnvp.yaml"), "--trainer.max_steps=2",
            f"--run.root={tmp_path}", "--run.wandb=disabled", "--run.test_after_fit=false",
            "--run.progress=none", "--data.init_args.n_train=1024", "--data.init_args.n_val=256"]
    default = run([*args, "--run.name=a"])
    assert type(default.trainer.profiler) is NullProfiler and default.trainer.global_step == 2
    simple = run([*args, "--run.name=b", "--trainer.profiler=simple"])
    assert isinstance(simple.trainer.profiler, SimpleProfiler)
    assert any("training_step" in k for k in simple.trainer.profiler.recorded_durations)
