"""Flow matching, and maximum-likelihood fine-tuning of any trained density.

``FlowMatching`` trains the field of the one CNF inside a ``Density(CNF, StandardNormal)``
by regression (:class:`cnf.ode.matching.FlowMatcher`): no ODE solve in training. At
validation and test it logs the *model's* likelihood, solved by the CNF's ``eval_solver``:

- ``val/nll``, ``test/nll`` (nats per sample; plus ``*/bpd`` for images): exact trace when
  ``exact_eval`` (the default: the dimension is small), otherwise Hutchinson with the CNF's
  ``n_probes`` drawn once per solve;
- ``test/nll_se``, ``val/nll_se``: the standard error of that mean over the evaluated
  examples (it covers the data's spread and, under Hutchinson, the estimator's noise);
- ``val/nfe`` (function evaluations of the last evaluation solve) and ``*/fm_loss``.

Images (a :class:`cnf.data.dequantization.DequantizedDensity` with uniform dequantization):
the regression runs on the preprocessed, dequantized images; the test averages the
dequantization over ``dequantization_draws`` = K draws (importance-weighted:
``log mean_k exp(log p(x + u_k))``, a bound that tightens with K; validation uses one draw,
to keep it cheap). K is logged as ``*/dequantization_draws``: bits/dim are comparable only at
equal K.

``FineTune`` is maximum likelihood (``DensityEstimation``) that starts from the density
weights of another run (``init_from``): a flow-matching run continued with RK4 or dopri5
and the RNODE terms, e.g. ``configs/experiment/toy_fm_then_mle.yaml``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from cnf.dequantization import DequantizedDensity, UniformDequantizer
from cnf.distributions import Density, StandardNormal
from cnf.errors import ConfigError, NonFiniteError
from cnf.flows.base import exact_logdet
from cnf.flows.continuous import matching_cnf
from cnf.lightning.density import DensityEstimation, OptimizerFactory, SchedulerFactory, _adam
from cnf.ode.matching import FlowMatcher

__all__ = ["FlowMatching", "FineTune", "resolve_checkpoint"]


class FlowMatching(DensityEstimation):
    """Train a CNF density by flow matching; evaluate it by its ODE likelihood.

    Args:
        density: ``Density(flow, StandardNormal)`` (or a ``DequantizedDensity`` for images)
            whose ``flow`` is one CNF block: ``CNF``, ``FFJORD(num_blocks=1)`` or ``ImageCNF``.
        optimizer, lr_scheduler: as in ``DensityEstimation``.
        exact_eval: exact trace for val/test likelihoods (else the CNF's own divergence).
        path, coupling, sigma, time_sampling, logit_loc, logit_scale: the probability path
            (:class:`cnf.ode.matching.FlowMatcher`): I-CFM is ``linear`` + ``independent`` +
            ``sigma > 0``; OT-CFM ``coupling: ot``; rectified flow ``sigma: 0``; the
            trigonometric interpolant ``path: vp``.
        dequantization_draws: K uniform dequantization draws per test image (validation: 1).
    """

    def __init__(
        self,
        density: Density,
        optimizer: OptimizerFactory = _adam,
        lr_scheduler: SchedulerFactory | None = None,
        exact_eval: bool = True,
        path: Literal["linear", "vp"] = "linear",
        coupling: Literal["independent", "ot"] = "independent",
        sigma: float = 0.0,
        time_sampling: Literal["uniform", "logit_normal"] = "uniform",
        logit_loc: float = 0.0,
        logit_scale: float = 1.0,
        dequantization_draws: int = 1,
    ):
        super().__init__(density, optimizer, lr_scheduler, exact_eval)
        if not isinstance(density.base, StandardNormal):
            raise ConfigError(
                f"flow matching carries the data to N(0, I): the density's base must be "
                f"cnf.distributions.StandardNormal, got {type(density.base).__name__}")
        matching_cnf(density.flow)  # raises for a flow flow matching cannot train
        self.images = isinstance(density, DequantizedDensity)
        if self.images and not isinstance(density.dequantizer, UniformDequantizer):
            raise ConfigError("flow matching on images needs uniform dequantization "
                              "(the default dequantizer of DequantizedDensity)")
        if dequantization_draws < 1:
            raise ConfigError(f"dequantization_draws must be >= 1, got {dequantization_draws}")
        self.matcher = FlowMatcher(path, coupling, sigma, time_sampling, logit_loc, logit_scale)
        self.dequantization_draws = int(dequantization_draws)
        self._eval_nll: dict[str, list[Tensor]] = {}

    @property
    def cnf(self):
        """The CNF block whose field is trained (looked up, not registered twice)."""
        return matching_cnf(self.density.flow)[0]

    # -- data --------------------------------------------------------------------------------
    def _split(self, batch: Any) -> tuple[Tensor, Tensor | None]:
        if isinstance(batch, (list, tuple)):
            x = batch[0]
            ctx = batch[1] if len(batch) > 1 and self.cnf.context_dim > 0 else None
            return x, ctx
        return batch, None

    def _states(self, x: Tensor) -> Tensor:
        """The flattened continuous states ``[B, D]`` the field is regressed on."""
        if self.images:
            x = x.to(next(self.density.parameters()).dtype)  # levels may arrive as uint8
            u, _ = self.density.dequantizer(x, self.density.levels)
            x, _ = self.density.to_continuous(x, u)
        return x.reshape(x.shape[0], -1)

    def fm_loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """The flow-matching loss of a data batch (levels for images)."""
        return self.matcher.loss(self.cnf.velocity, self._states(x), context)

    # -- training ----------------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, context = self._split(batch)
        loss = self.fm_loss(x, context)
        if not torch.isfinite(loss):
            raise NonFiniteError(
                f"the flow-matching loss became {float(loss)} at step {self.global_step}; "
                f"lower the learning rate (model.optimizer.init_args.lr) or clip gradients "
                f"(trainer.gradient_clip_val)")
        self.log("train/loss", loss, prog_bar=True, sync_dist=True)
        self.log("train/fm_loss", loss, sync_dist=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # no solve in training: there are no NFE to report, only the step time
        if self._step_started is not None:
            self.log("time/train_step_s", time.perf_counter() - self._step_started)

    # -- evaluation --------------------------------------------------------------------------
    def log_likelihood(self, x: Tensor, context: Tensor | None = None,
                       draws: int | None = None) -> Tensor:
        """Per-example log-likelihood ``[B]`` by the ODE (exact trace when ``exact_eval``);
        images: averaged over ``draws`` dequantization draws (default
        ``dequantization_draws``; nats per image)."""
        draws = self.dequantization_draws if draws is None else draws
        def once() -> Tensor:
            if self.exact_eval:
                with exact_logdet(self.density):
                    return self.density.log_prob(x, context)
            return self.density.log_prob(x, context)

        if not self.images or draws == 1:
            return once()
        values = torch.stack([once() for _ in range(draws)])
        return torch.logsumexp(values, 0) - math.log(draws)

    def _eval_step(self, batch: Any, stage: str) -> Tensor:
        x, context = self._split(batch)
        draws = self.dequantization_draws if stage == "test" else 1
        log_prob = self.log_likelihood(x, context, draws).detach()
        nll = -log_prob.mean()
        kw = {"sync_dist": True, "batch_size": x.shape[0]}
        self.log(f"{stage}/nll", nll, prog_bar=stage == "val", **kw)
        dim = math.prod(x.shape[1:])
        self.log(f"{stage}/nll_per_dim", nll / dim, **kw)
        if self.images:
            self.log(f"{stage}/bpd", nll / (dim * math.log(2.0)), prog_bar=stage == "val", **kw)
            self.log(f"{stage}/dequantization_draws", float(draws), **kw)
        self._log_stats(stage, **kw)
        with torch.no_grad():
            self.log(f"{stage}/fm_loss", self.fm_loss(x, context), **kw)
        self._eval_nll.setdefault(stage, []).append(-log_prob)
        return nll

    def _log_standard_error(self, stage: str) -> None:
        values = self._eval_nll.pop(stage, [])
        if not values:
            return
        nll = torch.cat(values)
        if self.trainer.world_size > 1:
            nll = self.all_gather(nll).reshape(-1)
        if nll.numel() > 1:
            se = nll.std() / math.sqrt(nll.numel())
            if self.images:
                se = se / (math.prod(self.density.event_shape) * math.log(2.0))
                self.log(f"{stage}/bpd_se", se)
            else:
                self.log(f"{stage}/nll_se", se)

    def on_validation_epoch_end(self) -> None:
        self._log_standard_error("val")

    def on_test_epoch_end(self) -> None:
        self._log_standard_error("test")

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        """Per-example log-likelihood (nats)."""
        x, context = self._split(batch)
        return self.log_likelihood(x, context)

    def configure_callbacks(self) -> list[L.Callback]:
        if not self.images:
            return []
        from cnf.lightning.images import ImageSamples

        return [ImageSamples([1.0, 0.8, 0.6], 10)]


def resolve_checkpoint(source: str | Path) -> Path:
    """A checkpoint file from ``source``: the file itself, a run directory (its best, else
    last, checkpoint) or an experiment folder (the newest run in it that has a checkpoint)."""
    from cnf.rundir import RunDir, find_runs

    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        run = RunDir(path)
        ckpt = run.best_or_last_checkpoint()
        if ckpt is not None:
            return ckpt
        candidates = [c for c in (r.best_or_last_checkpoint() for r in find_runs(path)) if c]
        if candidates:
            return max(candidates, key=lambda c: c.stat().st_mtime)
    raise ConfigError(
        f"init_from: no checkpoint at {str(source)!r}; give a .ckpt file, a run directory "
        f"(runs/<experiment>/<run>) or an experiment folder (runs/<experiment>) that holds a "
        f"finished run, e.g. run `make toy_fm` first")


def load_density_weights(density: torch.nn.Module, source: str | Path) -> Path:
    """Copy the ``density.*`` weights of a Lightning checkpoint into ``density``; the
    architectures must match (the solver settings may differ)."""
    ckpt = resolve_checkpoint(source)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    weights = state.get("state_dict", state)
    prefix = "density."
    sub = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if not sub:
        raise ConfigError(f"{ckpt} holds no density weights (keys 'density.*')")
    missing, unexpected = density.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise ConfigError(
            f"the model does not match the checkpoint {ckpt}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}; fine-tune with the same flow (dim, hidden, "
            f"layer_type, act, blocks) as the run that wrote it")
    return ckpt


class FineTune(DensityEstimation):
    """Maximum likelihood (``DensityEstimation``) that starts from another run's density
    weights: ``init_from`` is a checkpoint, a run directory or an experiment folder (its
    newest run). The weights are loaded once, when a fit starts at step 0; resuming this
    run's own checkpoint keeps its own weights. The solver, trace and RNODE terms come from
    this config, so a flow-matching field continues under, e.g., RK4 + kinetic energy.
    """

    def __init__(
        self,
        density: Density,
        init_from: str,
        optimizer: OptimizerFactory = _adam,
        lr_scheduler: SchedulerFactory | None = None,
        exact_eval: bool = True,
    ):
        super().__init__(density, optimizer, lr_scheduler, exact_eval)
        self.init_from = init_from
        self.initialized_from: str | None = None

    def on_fit_start(self) -> None:
        if self.global_step == 0:
            self.initialized_from = str(load_density_weights(self.density, self.init_from))
