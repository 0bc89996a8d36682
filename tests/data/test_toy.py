import math

import pytest
import torch

from cnf.data import toy
from cnf.errors import ConfigError


@pytest.mark.parametrize("name", toy.NAMES)
def test_shape_dtype_and_determinism(name):
    x = toy.sample(name, 1001, seed=3)
    assert x.shape == (1001, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    torch.testing.assert_close(x, toy.sample(name, 1001, seed=3))
    assert not torch.equal(x, toy.sample(name, 1001, seed=4))


def test_8gaussians_matches_ffjord_geometry():
    x = toy.sample("8gaussians", 40_000, seed=0)
    radius = x.norm(dim=1)
    # centers at radius 4/1.414, per-component std 0.5/1.414
    assert abs(radius.median().item() - 4 / 1.414) < 0.05
    angles = torch.atan2(x[:, 1], x[:, 0])
    nearest = torch.round(angles / (math.pi / 4)) * (math.pi / 4)
    centers = torch.stack([torch.cos(nearest), torch.sin(nearest)], 1) * 4 / 1.414
    assert abs((x - centers).std().item() - 0.5 / 1.414) < 0.01


def test_checkerboard_occupies_alternate_squares():
    x = toy.sample("checkerboard", 20_000, seed=0) / 2  # back to the unit grid
    cells = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])) % 2
    assert (cells == 1).float().mean() > 0.999 or (cells == 0).float().mean() > 0.999
    assert x.abs().max() <= 2.0


def test_unknown_name_lists_the_names():
    with pytest.raises(ConfigError, match="8gaussians.*swissroll"):
        toy.sample("9gaussians", 10)
    with pytest.raises(ConfigError, match="choose one of"):
        toy.ToyDataModule(name="spiral")


def test_datamodule_splits_are_independent():
    dm = toy.ToyDataModule("moons", n_train=500, n_val=200, n_test=300, batch_size=100)
    dm.setup()
    assert dm.train_set.shape == (500, 2) and dm.val_set.shape == (200, 2)
    assert dm.test_set.shape == (300, 2)
    assert not torch.equal(dm.train_set[:200], dm.val_set)
    assert not torch.equal(dm.val_set, dm.test_set[:200])
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].shape == (100, 2)


def test_resample_every_epoch_draws_fresh_training_data(tmp_path):
    import lightning as L

    from cnf.distributions import Density, StandardNormal
    from cnf.flows.coupling import RealNVP
    from cnf.lightning import DensityEstimation

    seen = []

    class Spy(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            seen.append(trainer.datamodule.train_set[:3].clone())

    dm = toy.ToyDataModule("moons", n_train=256, n_val=64, n_test=64, batch_size=128,
                           resample_every_epoch=True)
    model = DensityEstimation(Density(RealNVP(2, num_layers=2, hidden=8), StandardNormal(2)))
    L.Trainer(max_epochs=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path,
              callbacks=[Spy()]).fit(model, dm)
    assert len(seen) == 3
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])
