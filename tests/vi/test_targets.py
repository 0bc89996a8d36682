"""cnf/vi/targets.py: the four energies against an independent float64 transcription of
Rezende & Mohamed (2015) Table 1, the wall, the reference log Z values, callable targets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnf.errors import ConfigError, ShapeError
from cnf.vi.targets import CallableTarget, EnergyTarget, grid_log_z, load_callable


def paper_energy(k: int, z: np.ndarray) -> np.ndarray:
    """Table 1 of the paper, written out literally in numpy (no log-sum-exp tricks)."""
    z1, z2 = z[:, 0], z[:, 1]
    w1 = np.sin(2 * np.pi * z1 / 4)
    w2 = 3 * np.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(z1 - 1) / 0.3))
    if k == 1:
        return (0.5 * ((np.sqrt(z1**2 + z2**2) - 2) / 0.4) ** 2
                - np.log(np.exp(-0.5 * ((z1 - 2) / 0.6) ** 2) + np.exp(-0.5 * ((z1 + 2) / 0.6) ** 2)))
    if k == 2:
        return 0.5 * ((z2 - w1) / 0.4) ** 2
    if k == 3:
        return -np.log(np.exp(-0.5 * ((z2 - w1) / 0.35) ** 2)
                       + np.exp(-0.5 * ((z2 - w1 + w2) / 0.35) ** 2))
    return -np.log(np.exp(-0.5 * ((z2 - w1) / 0.4) ** 2)
                   + np.exp(-0.5 * ((z2 - w1 + w3) / 0.35) ** 2))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_energies_match_the_paper_inside_the_box(k):
    z = np.random.default_rng(k).uniform(-3.9, 3.9, size=(500, 2))
    got = EnergyTarget(f"u{k}").energy(torch.from_numpy(z)).numpy()
    np.testing.assert_allclose(got, paper_energy(k, z), rtol=1e-12, atol=1e-12)


def test_wall_only_acts_outside_the_box():
    t, raw = EnergyTarget("u2"), EnergyTarget("u1", bound=None)
    z = torch.tensor([[4.5, 0.0], [0.0, -5.0]], dtype=torch.float64)
    expected = torch.tensor([0.5 * (0.5 / 0.25) ** 2, 0.5 * (1.0 / 0.25) ** 2], dtype=torch.float64)
    torch.testing.assert_close(t.energy(z) - torch.from_numpy(paper_energy(2, z.numpy())), expected)
    assert raw.bound is None and raw.log_z is not None


def test_improper_targets_need_a_bound():
    for k in ("u2", "u3", "u4"):
        with pytest.raises(ConfigError, match="not normalizable"):
            EnergyTarget(k, bound=None)
    with pytest.raises(ConfigError, match="unknown energy"):
        EnergyTarget("u5")
    with pytest.raises(ShapeError):
        EnergyTarget("u1").energy(torch.zeros(3, 3))


def test_grid_log_z_matches_closed_forms():
    # with the wall, ∫ dz1 = 2·4 + wall·√(2π); ∫ dz2 = σ√(2π) per Gaussian branch (the wall
    # is > 4σ away from every branch of U2 and U3, which changes them by < 1e-8)
    z1_mass = 8 + 0.25 * math.sqrt(2 * math.pi)
    closed = {"u2": math.log(0.4 * math.sqrt(2 * math.pi) * z1_mass),
              "u3": math.log(2 * 0.35 * math.sqrt(2 * math.pi) * z1_mass)}
    for name, value in closed.items():
        t = EnergyTarget(name)
        assert abs(grid_log_z(t, 7.0, 1001) - value) < 1e-7  # measured 4e-12 at n=1001
        assert abs(t.log_z - value) < 1e-8                      # measured 1.2e-9


@pytest.mark.parametrize("name", ["u1", "u4"])
def test_reference_log_z_is_reproducible(name):
    t = EnergyTarget(name)
    assert abs(grid_log_z(t, 7.0, 1001) - t.log_z) < 1e-7  # measured < 2e-9
    assert EnergyTarget(name, wall=0.5).log_z is None        # other walls: no stored reference


def gaussian_energy(z):
    return 0.5 * z.pow(2).sum(1)


def test_callable_target_from_import_path():
    t = CallableTarget("tests.vi.test_targets:gaussian_energy", dim=3, log_z=1.5 * math.log(2 * math.pi))
    assert t.name == "gaussian_energy"
    torch.testing.assert_close(t.energy(torch.ones(2, 3)), torch.full((2,), 1.5))
    assert load_callable("tests.vi.test_targets.gaussian_energy") is gaussian_energy
    with pytest.raises(ConfigError, match="cannot import"):
        CallableTarget("no_such_module_xyz:f", dim=2)
    with pytest.raises(ConfigError, match="no attribute"):
        CallableTarget("tests.vi.test_targets:nope", dim=2)
    with pytest.raises(ShapeError):
        CallableTarget(lambda z: z, dim=2).energy(torch.zeros(4, 2))  # returns [B, D]


def test_grid_log_z_of_a_gaussian():
    t = CallableTarget(gaussian_energy, dim=2)
    assert abs(grid_log_z(t, 8.0, 801) - math.log(2 * math.pi)) < 1e-9
