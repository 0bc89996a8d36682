"""Unnormalized target densities ``p(z) ∝ exp(-U(z))`` for variational inference.

The four 2D energy functions of Rezende & Mohamed (2015, "Variational Inference with
Normalizing Flows", Table 1), exactly as printed there::

    w1(z) = sin(2π z1 / 4)
    w2(z) = 3 exp(-½ ((z1 - 1) / 0.6)²)
    w3(z) = 3 σ((z1 - 1) / 0.3),                       σ(x) = 1 / (1 + e^{-x})

    U1(z) = ½ ((‖z‖ - 2) / 0.4)² - ln(e^{-½((z1 - 2)/0.6)²} + e^{-½((z1 + 2)/0.6)²})
    U2(z) = ½ ((z2 - w1(z)) / 0.4)²
    U3(z) = -ln(e^{-½((z2 - w1(z))/0.35)²} + e^{-½((z2 - w1(z) + w2(z))/0.35)²})
    U4(z) = -ln(e^{-½((z2 - w1(z))/0.4)²}  + e^{-½((z2 - w1(z) + w3(z))/0.35)²})

**U2, U3 and U4 are not normalizable on R²**: they do not grow in z1, so ∫ e^{-U} dz1
diverges (the paper shows them on the box [-4, 4]²). A reverse-KL fit to them would spread
q along z1 without bound. We therefore confine every target to the paper's box with a soft
quadratic wall outside it::

    U(z) = U_k(z) + Σ_i ½ (max(|z_i| - bound, 0) / wall)²       (bound = 4, wall = 0.25)

Inside the box this *is* the paper's U_k; the wall only removes the infinite tails. For U1
the wall changes log Z by less than 1e-9 (U1 ≥ 12.5 where |z| > 4). ``bound=None`` gives the
raw U_k and is accepted only for U1, the one proper density.

``log_z`` of each energy target is the reference ``log ∫ e^{-U(z)} dz``, computed once by
:func:`grid_log_z` on a fine grid (see that function and ``tests/vi/test_targets.py``, which
recomputes it and checks U2/U3 against their closed forms).

A target from any Python function: :class:`CallableTarget` takes an import path
``"package.module:function"`` to a function ``U(z: Tensor[B, D]) -> Tensor[B]``.

A trained density as the target (probability density distillation, van den Oord et al.
2018): :class:`DensityTarget` loads a finished MAF / NSF / FFJORD / … run and uses
``U(z) = −log p_teacher(z)`` with ``log Z = 0``, so the VI module's ``kl`` is exactly
``KL(student ‖ teacher)``; the teacher is frozen.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn

from cnf.errors import ConfigError, DataError, ShapeError

__all__ = [
    "Target", "EnergyTarget", "CallableTarget", "ENERGIES", "energy_u1", "energy_u2",
    "energy_u3", "energy_u4", "grid_log_z", "load_callable", "DensityTarget",
]


# -- the four energy functions -----------------------------------------------------------
def _w1(z: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def _w2(z: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)


def _w3(z: Tensor) -> Tensor:
    return 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)


def _neg_log_sum_exp2(a: Tensor, b: Tensor) -> Tensor:
    """``-ln(e^a + e^b)``, computed stably. ``logsumexp`` rather than ``logaddexp``: the
    second derivative of ``torch.logaddexp`` is NaN once ``e^a`` and ``e^b`` underflow (U1 at
    ``z1 = 10``), and Hamiltonian / Langevin flows differentiate ``∇U``."""
    return -torch.logsumexp(torch.stack([a, b]), dim=0)


def energy_u1(z: Tensor) -> Tensor:
    """U1 (ring with two modes), ``[B, 2] -> [B]``."""
    r = torch.linalg.vector_norm(z, dim=1)
    return 0.5 * ((r - 2) / 0.4) ** 2 + _neg_log_sum_exp2(
        -0.5 * ((z[:, 0] - 2) / 0.6) ** 2, -0.5 * ((z[:, 0] + 2) / 0.6) ** 2)


def energy_u2(z: Tensor) -> Tensor:
    """U2 (a sine wave), ``[B, 2] -> [B]``."""
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2


def energy_u3(z: Tensor) -> Tensor:
    """U3 (a sine wave splitting around z1 = 1), ``[B, 2] -> [B]``."""
    w1 = _w1(z)
    return _neg_log_sum_exp2(-0.5 * ((z[:, 1] - w1) / 0.35) ** 2,
                             -0.5 * ((z[:, 1] - w1 + _w2(z)) / 0.35) ** 2)


def energy_u4(z: Tensor) -> Tensor:
    """U4 (a sine wave with a shifted branch for z1 > 1), ``[B, 2] -> [B]``."""
    w1 = _w1(z)
    return _neg_log_sum_exp2(-0.5 * ((z[:, 1] - w1) / 0.4) ** 2,
                             -0.5 * ((z[:, 1] - w1 + _w3(z)) / 0.35) ** 2)


ENERGIES: dict[str, Callable[[Tensor], Tensor]] = {
    "u1": energy_u1, "u2": energy_u2, "u3": energy_u3, "u4": energy_u4,
}

# log ∫ exp(-U_k(z)) dz with the default wall (bound=4, wall=0.25), from grid_log_z on
# [-7, 7]² with 4001² midpoints in float64. Measured: a 2001² grid differs by < 1.4e-8, a
# [-9, 9]² square by < 1.4e-9; U2 and U3 match their closed forms to 1.2e-9 (tests).
_REFERENCE_LOG_Z: dict[str, float] = {
    "u1": 1.877501625480937,
    "u2": 2.15750486853851,
    "u3": 2.717120656470275,
    "u4": 2.777508293006383,
}


class Target(nn.Module):
    """An unnormalized density ``p(z) ∝ exp(-energy(z))`` over ``[B, dim]``.

    Attributes:
        dim: the dimension D.
        log_z: ``log ∫ exp(-energy)`` if known (a reference for the KL and for log Z
            estimates), else ``None``.
        extent: half-width of the square to plot a 2D target on.
        name: a short name used in plots and run summaries.
    """

    dim: int
    log_z: float | None = None
    extent: float = 4.0
    name: str = "target"

    def energy(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def log_prob_unnormalized(self, z: Tensor) -> Tensor:
        """``-U(z)``, shape ``[B]``."""
        return -self.energy(z)

    def forward(self, z: Tensor) -> Tensor:
        return self.energy(z)

    def _check(self, z: Tensor, u: Tensor) -> Tensor:
        if u.shape != z.shape[:1]:
            raise ShapeError(
                f"the energy of target {self.name!r} returned shape {list(u.shape)} for input "
                f"{list(z.shape)}; it must return one value per sample, shape [{z.shape[0]}]")
        return u


class EnergyTarget(Target):
    """One of Rezende & Mohamed's 2D energies ``u1`` … ``u4``, confined to ``[-bound, bound]²``
    by a soft wall (see the module docstring for the formulas and why).

    Args:
        name: ``"u1"``, ``"u2"``, ``"u3"`` or ``"u4"``.
        bound: half-width of the box outside which the wall acts (``None``: no wall; only
            allowed for ``u1``).
        wall: length scale of the quadratic wall.

    Example::

        >>> t = EnergyTarget("u2")
        >>> t.energy(torch.zeros(3, 2))
        tensor([0., 0., 0.])
        >>> round(t.log_z, 4)
        2.1575
    """

    def __init__(self, name: str = "u1", bound: float | None = 4.0, wall: float = 0.25):
        super().__init__()
        key = name.lower()
        if key not in ENERGIES:
            raise ConfigError(f"unknown energy {name!r}; choose one of {sorted(ENERGIES)}, or "
                              f"use cnf.vi.targets.CallableTarget for your own function")
        if bound is None and key != "u1":
            raise ConfigError(
                f"{key.upper()} is not normalizable on R² (∫ exp(-U) dz1 diverges); keep a "
                f"finite `bound` (the paper plots it on [-4, 4]², bound: 4.0)")
        if wall <= 0:
            raise ConfigError(f"wall must be > 0, got {wall}")
        self.name, self.dim = key, 2
        self.bound, self.wall = bound, float(wall)
        self._fn = ENERGIES[key]
        self.extent = 4.0 if bound is None else float(bound)
        default = bound == 4.0 and self.wall == 0.25
        self.log_z = _REFERENCE_LOG_Z[key] if default else None
        if self.log_z is None and key == "u1" and bound is None:
            self.log_z = _REFERENCE_LOG_Z["u1"]  # the wall changes U1's log Z by < 1e-9

    def energy(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != 2:
            raise ShapeError(f"energy {self.name} is defined on [batch, 2]; got {list(z.shape)}")
        u = self._fn(z)
        if self.bound is not None:
            excess = torch.relu(z.abs() - self.bound) / self.wall
            u = u + 0.5 * excess.pow(2).sum(dim=1)
        return u

    def extra_repr(self) -> str:
        return f"name={self.name}, bound={self.bound}, wall={self.wall}"


def load_callable(path: str) -> Callable:
    """Import ``"package.module:attr"`` (or ``"package.module.attr"``) and return the object."""
    if ":" in path:
        module_name, _, attr = path.partition(":")
    else:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"energy {path!r} must be an import path like 'mypkg.mymodule:energy'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} for energy {path!r}: {exc}; "
                          f"check the path and that the module is on PYTHONPATH") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {module_name!r} has no attribute {attr!r} (energy {path!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{path!r} is not callable; it must be a function U(z) -> [batch]")
    return obj


class CallableTarget(Target):
    """A target given by any energy function ``U: Tensor[B, D] -> Tensor[B]``.

    Args:
        energy: the function, or its import path ``"package.module:function"`` (as in a
            config file).
        dim: D.
        log_z: its ``log ∫ exp(-U)`` if known (enables ``kl`` in the logs).
        extent: half-width of the plotting square (2D only).
        name: a short name for plots and summaries (default: the function's name).

    Example::

        >>> t = CallableTarget("cnf.vi.targets:energy_u1", dim=2)
        >>> t.energy(torch.zeros(4, 2)).shape
        torch.Size([4])
    """

    def __init__(self, energy: str | Callable[[Tensor], Tensor], dim: int,
                 log_z: float | None = None, extent: float = 4.0, name: str | None = None):
        super().__init__()
        self._fn = load_callable(energy) if isinstance(energy, str) else energy
        if not callable(self._fn):
            raise ConfigError("energy must be a callable or an import path to one")
        self.dim, self.log_z, self.extent = int(dim), log_z, float(extent)
        self.name = name or getattr(self._fn, "__name__", "callable")
        self.path = energy if isinstance(energy, str) else None

    def energy(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ShapeError(f"target {self.name!r} is defined on [batch, {self.dim}]; "
                             f"got {list(z.shape)}")
        return self._check(z, self._fn(z))

    def extra_repr(self) -> str:
        return f"name={self.name}, dim={self.dim}, log_z={self.log_z}"


@torch.no_grad()
def grid_log_z(target: Target, extent: float = 7.0, n: int = 2001,
               chunk: int = 1_000_000) -> float:
    """``log ∫ exp(-U(z)) dz`` of a 2D target by the midpoint rule on ``[-extent, extent]²``
    with ``n²`` cells, in float64. Exact up to the discretization (the integrands here are
    smooth, so the error falls fast with ``n``) and the mass outside the square."""
    if target.dim != 2:
        raise ConfigError(f"grid_log_z integrates 2D targets only (dim={target.dim})")
    h = 2 * extent / n
    g = -extent + h * (torch.arange(n, dtype=torch.float64) + 0.5)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    parts = [torch.logsumexp(-target.energy(c), 0) for c in pts.split(chunk)]
    return float(torch.logsumexp(torch.stack(parts), 0) + 2 * math.log(h))


def _resolve_checkpoint(ckpt: str | Path) -> tuple[Path, Path]:
    """``(config.yaml, checkpoint)`` of a checkpoint file, a run directory, or an experiment
    directory (its newest finished run)."""
    from cnf.rundir import RunDir, find_runs, run_dir_of_checkpoint

    path = Path(ckpt)
    if path.is_file():
        run = run_dir_of_checkpoint(path)
        if run is None or not run.config.exists():
            raise ConfigError(f"checkpoint {path} is not inside a run directory with its config "
                              f"(runs/<experiment>/<run>/checkpoints/); pass the run directory")
        return run.config, path
    run = RunDir(path)
    if not run.is_run:
        runs = [r for r in find_runs(path) if r.is_finished] if path.is_dir() else []
        if not runs:
            raise DataError(f"no finished run at {path}: train the teacher first (e.g. `cnf fit "
                            f"--config configs/experiment/toy_maf.yaml`) and pass its run "
                            f"directory, its experiment directory or a checkpoint")
        run = max(runs, key=lambda r: r.path.name)
    found = run.best_or_last_checkpoint()
    if found is None or not run.config.exists():
        raise DataError(f"run {run.path} has no checkpoint or config; was it finished?")
    return run.config, found


def _load_density(ckpt: str | Path, trust: bool = False) -> nn.Module:
    """Rebuild ``model.init_args.density`` of a run from its config and load its weights
    through :func:`cnf.checkpoint.load_checkpoint` (weights-only unless ``trust``)."""
    import yaml
    from jsonargparse import ArgumentParser

    from cnf.checkpoint import load_checkpoint

    config, ckpt_path = _resolve_checkpoint(ckpt)
    cfg = yaml.safe_load(config.read_text())
    try:
        density_cfg = cfg["model"]["init_args"]["density"]
    except (KeyError, TypeError):
        raise ConfigError(f"the run at {config.parent} has no model.init_args.density; "
                          f"DensityTarget needs a density-estimation run") from None
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(nn.Module, "density")
    density = parser.instantiate(parser.parse_object({"density": density_cfg})).density
    state = load_checkpoint(ckpt_path, trust=trust, map_location="cpu",
                            trust_option="DensityTarget(trust=True)")["state_dict"]
    prefix = "density."
    own = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    density.load_state_dict(own)
    return density


class DensityTarget(Target):
    """A trained density ``p_teacher`` as the target: ``U(z) = −log p_teacher(z)``,
    ``log Z = 0`` (the teacher is normalized), so ``kl`` in the VI logs is
    ``KL(q ‖ p_teacher)``. The teacher is frozen (no gradients, always in eval mode).

    Args:
        ckpt: a checkpoint file inside a run, a run directory (``runs/toy_maf/<run>``) or an
            experiment directory (``runs/toy_maf``: its newest finished run).
        extent: half-width of the plotting square (2D).
        name: a short name (default ``"teacher"``).
        trust: unpickle the checkpoint in full (only for files you trust); by default only
            tensors and plain containers are read (:func:`cnf.checkpoint.load_checkpoint`).

    Example (needs a trained run)::

        target = DensityTarget("runs/toy_maf")          # then ReverseKL(student, target)
    """

    def __init__(self, ckpt: str, extent: float = 4.0, name: str = "teacher",
                 trust: bool = False):
        super().__init__()
        teacher = _load_density(ckpt, trust=trust)
        teacher.eval()
        teacher.requires_grad_(False)
        shape = tuple(getattr(teacher, "event_shape", ()))
        if len(shape) != 1:
            raise ConfigError(f"DensityTarget needs a vector density; the teacher's event shape "
                              f"is {list(shape)}")
        self.teacher = teacher
        self.dim, self.log_z, self.extent, self.name = shape[0], 0.0, float(extent), name
        self.ckpt = str(ckpt)

    def train(self, mode: bool = True) -> DensityTarget:
        super().train(mode)
        self.teacher.eval()  # batch-norm statistics of the teacher never move
        return self

    def energy(self, z: Tensor) -> Tensor:
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ShapeError(f"target {self.name!r} is defined on [batch, {self.dim}]; "
                             f"got {list(z.shape)}")
        return -self.teacher.log_prob(z)

    def sample(self, n: int) -> Tensor:
        """``n`` samples of the teacher (for the forward path KL of a stochastic flow)."""
        with torch.no_grad():
            return self.teacher.sample(n)

    def extra_repr(self) -> str:
        return f"ckpt={self.ckpt}, dim={self.dim}"
