"""Variational inference by reverse KL: fit a flow ``q`` to an unnormalized target
``p(z) ∝ exp(-U(z))`` (Rezende & Mohamed, 2015, Sec. 6.1).

Training minimizes the (optionally annealed) free energy with samples from the flow's
generative pass alone (``Density.sample_and_log_prob``: ``z = flow.inverse(z0)``)::

    F_β = E_{z ~ q}[log q(z) + β_t U(z)],      β_t = min(1, beta_start + t / anneal_steps)

So the flow's ``inverse`` is the hot path: use flows whose inverse is cheap and analytic
(planar, radial, RealNVP, NSF couplings, IAF = ``Inverse(MAF)``, ``Inverse(IResNet)``, CNFs).

There is no data: :class:`StepsDataModule` feeds step indices so Lightning's loop runs;
validation and test draw ``eval_samples`` fresh samples and log the estimators of
:mod:`cnf.vi.estimators`.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable as SchedulerFactory
from lightning.pytorch.cli import OptimizerCallable as OptimizerFactory
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from cnf.distributions import Density
from cnf.errors import CNFError, ConfigError, NonFiniteError
from cnf.flows.base import exact_logdet, gather
from cnf.lightning.base import OptimizationMixin
from cnf.lightning.base import default_adam as _adam
from cnf.lightning.callbacks import PeriodicPlot
from cnf.vi.estimators import effective_sample_size, free_energy, importance_log_z
from cnf.vi.targets import Target

__all__ = ["ReverseKL", "HamiltonianVI", "StochasticFlowVI", "StepsDataModule", "TargetPlot2D"]


class _Steps(Dataset):
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tensor:
        return torch.tensor(i)


class StepsDataModule(L.LightningDataModule):
    """Batches of step indices (the model samples its own inputs).

    Args:
        steps_per_epoch: training steps per "epoch" (only sets the epoch length).
        val_batches: validation batches per validation; each draws the module's
            ``eval_samples`` (so 1 is usual).
        test_batches: test batches (same).
    """

    name = "target"

    def __init__(self, steps_per_epoch: int = 1000, val_batches: int = 1, test_batches: int = 1):
        super().__init__()
        if min(steps_per_epoch, val_batches, test_batches) < 1:
            raise ConfigError("steps_per_epoch, val_batches and test_batches must be >= 1")
        self.steps_per_epoch, self.val_batches, self.test_batches = (
            steps_per_epoch, val_batches, test_batches)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(self.steps_per_epoch), batch_size=1)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(self.val_batches), batch_size=1)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(_Steps(self.test_batches), batch_size=1)


class ReverseKL(OptimizationMixin, L.LightningModule):
    """Fit ``density`` (the approximation q) to ``target`` by minimizing the free energy.

    Logs ``train/loss`` (the annealed free energy plus any flow regularizers),
    ``train/free_energy`` (at β = 1), ``train/beta``, ``time/train_step_s``, the flows'
    counters (``train/nfe_forward`` …) and, at validation and test on ``eval_samples`` fresh
    samples with exact log-determinants: ``{val,test}/free_energy``, ``/elbo`` (= -F, a lower
    bound on log Z), ``/log_z`` (importance-sampled estimate), ``/ess`` (effective sample size
    as a fraction of the samples), and when the target's ``log_z`` is known ``/kl``
    (= F + log Z = KL(q ‖ p) in nats) and ``/log_z_ref``.

    Args:
        density: the approximation, e.g. ``Density(PlanarFlow(2, 32), StandardNormal(2))``.
        target: a :class:`cnf.vi.targets.Target`, e.g. ``EnergyTarget("u1")``.
        num_samples: samples per training step.
        eval_samples: samples per validation / test batch.
        eval_chunk: samples per forward pass at evaluation (bounds memory).
        beta_start, anneal_steps: the annealing schedule ``β_t = min(1, beta_start +
            t / anneal_steps)``; ``anneal_steps=0`` trains at β = 1 throughout. The paper used
            ``beta_start=0.01, anneal_steps=10000``.
        optimizer, lr_scheduler: as in :class:`cnf.lightning.DensityEstimation`.
        exact_eval: evaluate with exact log-determinants when the flow has an estimator.
        plot: add a :class:`TargetPlot2D` callback (2D targets): ``plots/target_vs_q.png``.
        plot_every_n_val: also plot every that many validations (0: only at the end).

    Example::

        >>> from cnf.flows.coupling import RealNVP
        >>> from cnf.distributions import StandardNormal
        >>> from cnf.vi.targets import EnergyTarget
        >>> model = ReverseKL(Density(RealNVP(2), StandardNormal(2)), EnergyTarget("u1"))
    """

    def __init__(
        self,
        density: Density,
        target: Target,
        num_samples: int = 512,
        eval_samples: int = 100_000,
        eval_chunk: int = 10_000,
        beta_start: float = 1.0,
        anneal_steps: int = 0,
        optimizer: OptimizerFactory = _adam,
        lr_scheduler: SchedulerFactory | None = None,
        exact_eval: bool = True,
        plot: bool = True,
        plot_every_n_val: int = 0,
    ):
        super().__init__()
        if tuple(density.event_shape) != (target.dim,):
            raise ConfigError(
                f"the flow's event shape {list(density.event_shape)} does not match the "
                f"target's dimension {target.dim}; set the flow's `dim` and the base's `shape` "
                f"to {target.dim}")
        if num_samples < 1 or eval_samples < 2 or eval_chunk < 1:
            raise ConfigError("num_samples must be >= 1, eval_samples >= 2, eval_chunk >= 1")
        if not 0 < beta_start <= 1 or anneal_steps < 0:
            raise ConfigError("beta_start must be in (0, 1] and anneal_steps >= 0")
        self.density = density
        self.target = target
        self.num_samples, self.eval_samples, self.eval_chunk = num_samples, eval_samples, eval_chunk
        self.beta_start, self.anneal_steps = float(beta_start), int(anneal_steps)
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        self.exact_eval = exact_eval
        self.plot, self.plot_every_n_val = plot, plot_every_n_val
        self._step_started: float | None = None
        self.save_hyperparameters(ignore=["density", "target", "optimizer", "lr_scheduler"])

    # -- schedule ------------------------------------------------------------------------
    def beta(self, step: int | None = None) -> float:
        """The inverse temperature β_t at training step ``step`` (default: the current one)."""
        if self.anneal_steps == 0:
            return 1.0
        t = self.global_step if step is None else step
        return min(1.0, self.beta_start + t / self.anneal_steps)

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if isinstance(dm, StepsDataModule):
            dm.name = self.target.name  # shows up as "data" in summary.json

    def configure_callbacks(self) -> list[L.Callback]:
        if self.plot and self.target.dim == 2:
            return [TargetPlot2D(every_n_val_epochs=self.plot_every_n_val)]
        return []

    # -- training ------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    # -- what a sample is (subclasses with extended spaces or stochastic paths override) --
    def sample_terms(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` samples ``z`` of q with ``log q(z)`` and the target energy ``U(z)``, such that
        ``log w = −U − log q`` is an importance log-weight with ``E_q[w] = Z``."""
        z, log_q = self.density.sample_and_log_prob(n)
        return z, log_q, self.target.energy(z)

    def q_log_prob(self, z: Tensor) -> Tensor | None:
        """``log q(z)`` of the approximation's marginal, or ``None`` when it is intractable."""
        return self.density.log_prob(z)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        z, log_q, energy = self.sample_terms(self.num_samples)
        beta = self.beta()
        loss = (log_q + beta * energy).mean()
        extra = gather(self.density, "extra_losses")
        if extra:
            loss = loss + sum(extra.values())
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"the free energy became {float(loss)} at step {self.global_step}; lower the "
                f"learning rate (model.optimizer.init_args.lr), clip gradients "
                f"(trainer.gradient_clip_val), anneal the target (model.beta_start / "
                f"model.anneal_steps) or bound the flow's scales.")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/free_energy", free_energy(log_q, energy).detach())
        self.log("train/beta", beta)
        for name, value in extra.items():
            self.log(f"train/{name}", value)
        return loss


    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        for key, value in gather(self.density, "stats").items():
            self.log(f"train/{key}", float(value))
        if self._step_started is not None:
            self.log("time/train_step_s", time.perf_counter() - self._step_started)

    # -- evaluation ----------------------------------------------------------------------
    def draw(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """``n`` samples of q with ``log q`` and ``U`` (detached, exact log-dets if
        ``exact_eval``), drawn ``eval_chunk`` at a time."""
        zs, lqs, us = [], [], []
        left = n
        while left > 0:
            m = min(left, self.eval_chunk)
            if self.exact_eval:
                with exact_logdet(self.density):
                    z, log_q, energy = self.sample_terms(m)
            else:
                z, log_q, energy = self.sample_terms(m)
            zs.append(z.detach())
            lqs.append(log_q.detach())
            us.append(energy.detach())
            left -= m
        return torch.cat(zs), torch.cat(lqs), torch.cat(us)

    def estimates(self, n: int | None = None) -> dict[str, float]:
        """Free energy, ELBO, importance-sampled log Z and ESS fraction from ``n`` samples
        (default ``eval_samples``); ``kl`` and ``log_z_ref`` when the target knows log Z."""
        _, log_q, energy = self.draw(n or self.eval_samples)
        ok = torch.isfinite(log_q) & torch.isfinite(energy)
        log_q, energy = log_q[ok].double(), energy[ok].double()
        fe = free_energy(log_q, energy)
        log_w = -energy - log_q
        out = {"free_energy": float(fe), "elbo": float(-fe),
               "log_z": float(importance_log_z(log_w)),
               "ess": float(effective_sample_size(log_w)),
               "nonfinite_fraction": float(1 - ok.double().mean())}
        if self.target.log_z is not None:
            out["kl"] = out["free_energy"] + self.target.log_z
            out["log_z_ref"] = float(self.target.log_z)
        return out

    def _eval_step(self, stage: str) -> None:
        with torch.enable_grad():  # CNF divergences need autograd even at evaluation
            est = self.estimates()
        for key, value in est.items():
            self.log(f"{stage}/{key}", value, prog_bar=stage == "val" and key == "free_energy",
                     batch_size=self.eval_samples, sync_dist=True)
        for key, value in gather(self.density, "stats").items():
            self.log(f"{stage}/{key}", float(value), batch_size=self.eval_samples, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step("test")


class HamiltonianVI(ReverseKL):
    """Hamiltonian variational inference (Caterini et al., 2018): ``density`` is the initial
    ``q_0(z)``; a :class:`cnf.flows.hamiltonian.HamiltonianFlow` whose potential is the
    target's energy (gradients by autograd) moves ``(z_0, ρ_0)``, ``ρ_0 ~ N(0, I)``, by
    ``steps`` leapfrog steps (learned step sizes, optional tempering). The ELBO is on the
    extended space with a Gaussian momentum::

        log q(z_K, ρ_K) = log q_0(z_0) + log N(ρ_0) − log|det|        (0 without tempering)
        Ũ(z, ρ)        = U(z) + ½‖ρ‖² + (d/2) log 2π                 (∫ e^{−Ũ} = Z)

    so ``elbo`` ≤ log Z, ``log_z`` (importance sampled on the extended space) is consistent,
    and ``kl`` is the extended-space KL, an upper bound on KL(q(z) ‖ p(z)). q's marginal
    density is intractable (the plot shows samples only).

    Args:
        density: ``q_0`` over z, e.g. ``Density(RealNVP(2), StandardNormal(2))``.
        target: the target (its ``energy`` is the potential).
        steps, step_size, learn_step_size, tempering, beta0: the Hamiltonian flow.
        max_force: limit ``‖∇U‖`` per sample in the leapfrog kicks (the map stays volume
            preserving, the ELBO a bound); set it above ``‖∇U‖`` where the target has mass.
            Without it a sample of q₀ where U is stiff can make leapfrog diverge (the
            ``vi_u<k>_hamiltonian`` configs use 100; :mod:`cnf.flows.hamiltonian`).
        Other arguments: as :class:`ReverseKL`.
    """

    def __init__(self, density: Density, target: Target, steps: int = 5,
                 step_size: float = 0.1, learn_step_size: bool = True,
                 tempering: bool = False, beta0: float = 0.5, max_force: float | None = None,
                 **kwargs: Any):
        super().__init__(density, target, **kwargs)
        from cnf.flows.hamiltonian import HamiltonianFlow

        self.hamiltonian = HamiltonianFlow(2 * target.dim, potential=target.energy, steps=steps,
                                           step_size=step_size,
                                           learn_step_size=learn_step_size,
                                           tempering=tempering, beta0=beta0,
                                           max_force=max_force)

    def nonfinite_hint(self) -> str:
        if self.hamiltonian.max_force is not None:
            return ""
        return ("; or limit the leapfrog force (model.init_args.max_force, above ‖∇U‖ where "
                "the target has mass, e.g. 100 for U1-U4): a far sample of q0 where U is steep "
                "can fling the leapfrog trajectory out")

    def _momentum_log_prob(self, rho: Tensor) -> Tensor:
        return -0.5 * rho.pow(2).sum(1) - 0.5 * rho.shape[1] * math.log(2 * math.pi)

    def sample_terms(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        z0, log_q0 = self.density.sample_and_log_prob(n)
        rho0 = torch.randn_like(z0)
        x, logdet = self.hamiltonian.inverse(torch.cat([z0, rho0], 1))
        d = z0.shape[1]
        z, rho = x[:, :d], x[:, d:]
        log_q = log_q0 + self._momentum_log_prob(rho0) - logdet
        return z, log_q, self.target.energy(z) - self._momentum_log_prob(rho)

    def q_log_prob(self, z: Tensor) -> Tensor | None:
        return None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self.log("train/step_size", float(self.hamiltonian.log_eps.detach().exp().mean()))


class StochasticFlowVI(ReverseKL):
    """A stochastic normalizing flow (Wu, Köhler & Noé, 2020) fitted by the reverse path KL:
    ``density``'s flow (a Chain, e.g. RealNVP) with Langevin layers (unadjusted, or
    Metropolis-adjusted with ``mala``) towards the target inserted after every ``every`` of
    its layers (:class:`cnf.vi.snf.StochasticFlow`). The path log-weight is an unbiased
    importance weight (``E[w] = Z``), so ``log_z`` and ``ess`` are as for a flow; ``elbo``
    and ``kl`` are the path versions (``kl`` ≥ KL of the marginal). Logs
    ``train/acceptance`` with ``mala`` and ``train/step_size`` (mean ε) with
    ``learn_step_size``.

    ``path_kl`` chooses the training loss: ``"reverse"`` (``E_{P_f}[−log w]``, from the
    flow's own paths, annealed by β), ``"forward"`` (``KL(P_b ‖ P_f)``: paths run backwards
    from target samples, :meth:`cnf.vi.snf.StochasticFlow.backward_log_q`) or ``"both"``
    (their sum). The target samples are ``target.sample(n)`` when the target has one (e.g.
    :class:`cnf.vi.targets.DensityTarget`); otherwise the endpoints of ``num_samples`` of the
    flow's own paths resampled by their importance weights (self-normalized, so biased
    towards q while the ESS is low). Logs ``train/forward_path_kl`` (target log Z known)
    or ``train/forward_log_w``.

    Args:
        density: the deterministic flow and base.
        target: the target.
        every, langevin_steps, step_size, mala, anneal, learn_step_size: the Langevin layers
            (:class:`cnf.vi.snf.StochasticFlow`).
        temper_kernels: while β < 1 (annealing), the reverse path KL's Langevin layers move
            on ``β U`` — the tempered target the loss fits — instead of ``U`` (evaluation and
            the forward path KL always use ``U``).
        path_kl: ``"reverse"``, ``"forward"`` or ``"both"``.
        Other arguments: as :class:`ReverseKL`.
    """

    def __init__(self, density: Density, target: Target, every: int = 2,
                 langevin_steps: int = 1, step_size: float = 0.05, mala: bool = False,
                 anneal: bool = True, path_kl: str = "reverse", learn_step_size: bool = False,
                 temper_kernels: bool = False, **kwargs: Any):
        super().__init__(density, target, **kwargs)
        from cnf.vi.snf import StochasticFlow

        if path_kl not in ("reverse", "forward", "both"):
            raise ConfigError(f"path_kl must be 'reverse', 'forward' or 'both' (got {path_kl!r})")
        self.path_kl, self.temper_kernels = path_kl, bool(temper_kernels)
        self._kernel_beta = 1.0
        self.snf = StochasticFlow(density.flow, density.base, every, langevin_steps,
                                  step_size, mala, anneal, learn_step_size)

    def target_samples(self, n: int) -> Tensor:
        """``n`` samples of the target: its own sampler, or importance-resampled path ends."""
        sampler = getattr(self.target, "sample", None)
        if callable(sampler):
            with torch.no_grad():
                return sampler(n).detach()
        with torch.no_grad():
            z, log_q, energy = self.sample_terms(n)
            log_w = -energy - log_q
            ok = torch.isfinite(log_w)
            probs = torch.softmax(torch.where(ok, log_w, torch.full_like(log_w, -math.inf)), 0)
            idx = torch.multinomial(probs, n, replacement=True)
        return z[idx].detach()

    def forward_path_terms(self, n: int) -> tuple[Tensor, Tensor]:
        """``(log q_eff, U)`` along ``n`` backward paths from target samples; the forward
        path KL is ``mean(−U − log q_eff) − log Z``."""
        x = self.target_samples(n)
        _, log_q = self.snf.backward_log_q(x, self.target.energy)
        return log_q, self.target.energy(x).detach()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.path_kl == "reverse":
            self._kernel_beta = self.beta() if self.temper_kernels else 1.0
            try:
                return super().training_step(batch, batch_idx)
            finally:
                self._kernel_beta = 1.0
        log_q, energy = self.forward_path_terms(self.num_samples)
        loss = -log_q.mean()
        log_w = float((-energy - log_q).detach().mean())
        if self.target.log_z is not None:
            self.log("train/forward_path_kl", log_w - self.target.log_z)
        else:
            self.log("train/forward_log_w", log_w)
        if self.path_kl == "both":
            z, log_q_f, energy_f = self.sample_terms(
                self.num_samples, self.beta() if self.temper_kernels else 1.0)
            reverse = (log_q_f + self.beta() * energy_f).mean()
            self.log("train/free_energy", free_energy(log_q_f, energy_f).detach())
            self.log("train/beta", self.beta())
            loss = loss + reverse
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"the path KL became {float(loss)} at step {self.global_step}; lower the "
                f"learning rate (model.optimizer.init_args.lr) or the Langevin step size "
                f"(model.step_size), or clip gradients (trainer.gradient_clip_val).")
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def sample_terms(self, n: int, kernel_beta: float | None = None
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """As :meth:`ReverseKL.sample_terms`; the Langevin layers move on ``kernel_beta · U``
        (default 1, or the annealed β inside a ``temper_kernels`` training step)."""
        beta = self._kernel_beta if kernel_beta is None else float(kernel_beta)
        energy = self.target.energy
        if beta != 1.0:
            def energy(z: Tensor) -> Tensor:
                return beta * self.target.energy(z)
        z, log_q = self.snf.sample_and_log_q(n, energy)
        return z, log_q, self.target.energy(z)

    def q_log_prob(self, z: Tensor) -> Tensor | None:
        return None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        rate = self.snf.acceptance()
        if rate is not None:
            self.log("train/acceptance", rate)
        learned = [lay.step_size.detach() for lay in self.snf.langevin
                   if isinstance(lay.log_step_size, torch.nn.Parameter)]
        if learned:
            self.log("train/step_size", float(torch.stack(learned).mean()))


class _Intractable(Exception):
    pass


class TargetPlot2D(PeriodicPlot):
    """Save ``plots/target_vs_q.png`` (and ``target_vs_q_step<N>.png`` every
    ``every_n_val_epochs`` validations): the normalized target ``exp(-U)/Z`` on a grid, q's
    density ``exp(log q)`` on the same grid, and a histogram of q's samples."""

    final_name = "target_vs_q"
    step_prefix = "target_vs_q_step"

    def __init__(self, every_n_val_epochs: int = 0, grid_size: int = 150,
                 n_samples: int = 50_000):
        super().__init__(every_n_val_epochs)
        self.grid_size, self.n_samples = grid_size, n_samples

    def plot(self, trainer: L.Trainer, pl_module: ReverseKL, filename: str) -> Path | None:
        if not trainer.is_global_zero or getattr(pl_module, "target", None) is None:
            return None
        target, density = pl_module.target, pl_module.density
        if target.dim != 2:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        was_training = pl_module.training
        pl_module.eval()
        lim = float(target.extent)
        g = torch.linspace(-lim, lim, self.grid_size, device=pl_module.device)
        xx, yy = torch.meshgrid(g, g, indexing="xy")
        grid = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
        cell = (2 * lim / (self.grid_size - 1)) ** 2
        with torch.no_grad():
            log_p = -target.energy(grid)
        log_p = log_p - (target.log_z if target.log_z is not None
                         else float(torch.logsumexp(log_p, 0) + math.log(cell)))
        q_note = ""
        with torch.enable_grad(), exact_logdet(density):
            try:  # density evaluation runs the flow's forward, numerical for some flows
                parts = [pl_module.q_log_prob(c) for c in grid.split(5000)]
                if any(p is None for p in parts):
                    raise _Intractable()
                log_q = torch.cat([p.detach() for p in parts])
            except (CNFError, _Intractable) as exc:
                log_q = torch.full((grid.shape[0],), float("nan"), device=grid.device)
                q_note = (" (marginal intractable)" if isinstance(exc, _Intractable)
                          else f" (unavailable: {type(exc).__name__})")
            est = pl_module.estimates(min(pl_module.eval_samples, 20_000))
            samples = torch.cat([pl_module.sample_terms(min(10_000, self.n_samples))[0].detach()
                                 for _ in range(math.ceil(self.n_samples / 10_000))])
        if was_training:
            pl_module.train()
        n = self.grid_size
        p_img = log_p.exp().reshape(n, n).cpu().numpy()
        q_img = log_q.exp().nan_to_num(0.0).reshape(n, n).cpu().numpy()
        s = samples[torch.isfinite(samples).all(1)].cpu().numpy()
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
        vmax = float(p_img.max())
        axes[0].imshow(p_img, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis",
                       vmax=vmax)
        axes[0].set_title(f"target exp(-U)/Z ({target.name})")
        axes[1].imshow(q_img, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis",
                       vmax=vmax)
        axes[1].set_title("q density" + q_note, fontsize=10 if q_note else None)
        axes[2].hist2d(s[:, 0], s[:, 1], bins=n, range=[[-lim, lim], [-lim, lim]],
                       cmap="viridis")
        axes[2].set_title("q samples")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
        flow_name = type(density.flow).__name__
        text = (f"{flow_name} — step {trainer.global_step}: free energy {est['free_energy']:.3f}, "
                f"log Z (IS) {est['log_z']:.3f}, ESS {est['ess']:.2f}")
        if target.log_z is not None:
            text += f", KL {est['kl']:.3f} (log Z ref {target.log_z:.3f})"
        fig.suptitle(text, fontsize=9)
        return self.save(fig, trainer, filename)
