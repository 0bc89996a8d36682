"""What users do with a trained flow: sample, interpolate, score anomalies, inpaint, and
evaluate the test likelihood exactly (library functions; ``cnf evaluate`` is their command
line, :mod:`cnf.evaluate.cli`).

Functions work on any :class:`cnf.distributions.Density` (vectors) and on
:class:`cnf.dequantization.DequantizedDensity` (discrete images).

- **Sampling with temperature**: ``z ~ N(0, T² I)`` pushed through the inverse flow.
- **Interpolation** (Glow, Kingma & Dhariwal 2018): ``z_t = (1 − t) z_0 + t z_1`` between the
  latents of two data points, decoded back.
- **Anomaly scores**: the per-example log-likelihood, and its p-value against the held-out
  likelihoods ``p = (1 + #{ref ≤ log p(x)}) / (1 + n_ref)`` (small = unusually unlikely).
- **Inpainting** by MAP over the masked entries (NICE, Dinh et al. 2015): gradient ascent on
  ``log p(x_obs, x_mis)`` over ``x_mis``; for images in pixel space (``y ∈ (0, 1)``, including
  the logit Jacobian).
- **Exact evaluation**: closed-form log-dets are exact; flows with a stochastic log-det
  (FFJORD's Hutchinson trace, residual flows' power series) are switched to their exact mode
  when ``D <= max_exact_dim``, and otherwise averaged over many probe draws (with the standard
  error). The result states which.

    >>> from cnf.distributions import Density, StandardNormal
    >>> from cnf.flows.coupling import RealNVP
    >>> d = Density(RealNVP(2), StandardNormal(2))
    >>> exact_evaluate(d, torch.randn(50, 2)).method
    'exact (closed-form log-determinant)'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from cnf.dequantization import DequantizedDensity
from cnf.distributions import Density
from cnf.errors import ConfigError
from cnf.flows.base import exact_logdet

__all__ = ["sample", "encode", "decode", "interpolate", "log_likelihoods", "p_values",
           "anomaly_scores", "corrupt", "anomaly_demo", "inpaint", "ExactResult",
           "exact_evaluate"]


# -- latent codes -----------------------------------------------------------------------------
# No torch.no_grad() here: CNFs and residual flows compute log-dets with autograd even when
# only evaluating, so results are detached instead.
def sample(density: Density, n: int, temperature: float = 1.0, seed: int | None = None) -> Tensor:
    """``n`` samples at ``temperature`` (``[n, *event_shape]``; integer levels for images)."""
    if seed is not None:
        torch.manual_seed(seed)
    density.eval()
    return density.sample(n, temperature=temperature).detach()


def encode(density: Density, x: Tensor) -> Tensor:
    """Latent code ``z = f(x)``; images are taken at their bin centres (``u = 1/2``)."""
    density.eval()
    if isinstance(density, DequantizedDensity):
        x, _ = density.to_continuous(x)
    return density.flow(x)[0].detach()


def decode(density: Density, z: Tensor) -> Tensor:
    """Data point ``x = f⁻¹(z)`` (integer levels for images)."""
    density.eval()
    x = density.flow.inverse(z)[0].detach()
    return density.to_levels(x) if isinstance(density, DequantizedDensity) else x


def interpolate(density: Density, x0: Tensor, x1: Tensor, steps: int = 8) -> Tensor:
    """``steps`` points on the latent segment between ``x0`` and ``x1`` (single examples,
    ``[*event_shape]``), decoded: ``[steps, *event_shape]``; the ends reproduce the inputs."""
    z = encode(density, torch.stack([x0, x1]))
    t = torch.linspace(0, 1, steps, dtype=z.dtype, device=z.device).view(-1, *[1] * (z.dim() - 1))
    return decode(density, (1 - t) * z[0:1] + t * z[1:2])


# -- likelihoods and anomalies ----------------------------------------------------------------
def log_likelihoods(density: Density, data: Tensor, batch_size: int = 1000,
                    exact: bool = True) -> Tensor:
    """Per-example ``log p(x)`` in nats, ``[N]`` (the dequantization bound for images);
    ``exact`` switches stochastic log-dets to their exact mode."""
    density.eval()
    if exact:
        with exact_logdet(density):
            return _log_probs(density, data, batch_size)
    return _log_probs(density, data, batch_size)


def p_values(scores: Tensor, reference: Tensor) -> Tensor:
    """Left-tail p-values of log-likelihoods ``scores`` against held-out ``reference``
    log-likelihoods: ``(1 + #{ref ≤ s}) / (1 + n_ref)``; small means unusually unlikely."""
    ref = torch.sort(reference.flatten().double())[0]
    below = torch.searchsorted(ref, scores.double(), right=True)
    return (1 + below).double() / (1 + ref.numel())


def anomaly_scores(density: Density, x: Tensor, reference: Tensor,
                   batch_size: int = 1000) -> dict[str, Tensor]:
    """``{"log_prob": [N], "p_value": [N]}`` for ``x``, with p-values against the
    log-likelihoods of the held-out ``reference`` data."""
    ref = log_likelihoods(density, reference, batch_size)
    lp = log_likelihoods(density, x, batch_size)
    return {"log_prob": lp, "p_value": p_values(lp, ref)}


def corrupt(x: Tensor, levels: int, kind: str = "noise", amount: float = 0.2,
            seed: int = 0) -> Tensor:
    """Corrupted copies of integer-level images ``x [N, C, H, W]``.

    ``noise``: a fraction ``amount`` of the pixels replaced by uniform random levels;
    ``patch``: a random square covering ``amount`` of the image set to the maximum level;
    ``shuffle``: the rows of each image permuted at random.
    """
    g = torch.Generator().manual_seed(seed)
    x = x.clone()
    if kind == "noise":
        hit = torch.rand(x.shape, generator=g) < amount
        x[hit] = torch.randint(0, levels, (int(hit.sum()),), generator=g).to(x.dtype)
    elif kind == "patch":
        h, w = x.shape[-2:]
        side = max(1, round(math.sqrt(amount * h * w)))
        for i in range(len(x)):
            r = int(torch.randint(0, h - side + 1, (1,), generator=g))
            c = int(torch.randint(0, w - side + 1, (1,), generator=g))
            x[i, ..., r:r + side, c:c + side] = levels - 1
    elif kind == "shuffle":
        for i in range(len(x)):
            x[i] = x[i][..., torch.randperm(x.shape[-2], generator=g), :]
    else:
        raise ConfigError(f"unknown corruption {kind!r}; choose noise, patch or shuffle")
    return x


def anomaly_demo(density: DequantizedDensity, clean: Tensor, reference: Tensor,
                 kind: str = "noise", amount: float = 0.2, seed: int = 0) -> dict[str, Any]:
    """Score clean test images and corrupted copies of them; AUROC of ``−log p`` for telling
    them apart (``sklearn.metrics.roc_auc_score``), and the fraction flagged at p < 0.05."""
    from sklearn.metrics import roc_auc_score

    bad = corrupt(clean, density.levels, kind, amount, seed)
    torch.manual_seed(seed)  # the dequantization noise of the scores
    a = anomaly_scores(density, clean, reference)
    b = anomaly_scores(density, bad, reference)
    labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(bad))])
    scores = -torch.cat([a["log_prob"], b["log_prob"]])
    return {
        "corruption": kind, "amount": amount, "n_clean": len(clean), "n_corrupted": len(bad),
        "auroc": float(roc_auc_score(labels.numpy(), scores.numpy())),
        "flagged_p<0.05_clean": float((a["p_value"] < 0.05).double().mean()),
        "flagged_p<0.05_corrupted": float((b["p_value"] < 0.05).double().mean()),
        "mean_bpd_clean": float(-a["log_prob"].mean() / (density.dim * math.log(2))),
        "mean_bpd_corrupted": float(-b["log_prob"].mean() / (density.dim * math.log(2))),
    }


# -- inpainting -------------------------------------------------------------------------------
def inpaint(density: Density, x: Tensor, mask: Tensor, steps: int = 500, lr: float = 0.05,
            seed: int = 0) -> Tensor:
    """Fill the entries of ``x`` where ``mask`` is True by MAP: gradient ascent (Adam) on
    ``log p(x)`` over the masked entries, observed entries fixed. For images the search runs
    over pixel intensities ``y = σ(θ) ∈ (0, 1)`` and the result is quantized to levels; for
    vectors over the raw values. Returns a tensor like ``x``."""
    if mask.shape != x.shape:
        mask = mask.expand_as(x)
    mask = mask.bool()
    density.eval()
    for p in density.parameters():
        p.requires_grad_(False)
    try:
        g = torch.Generator().manual_seed(seed)
        if isinstance(density, DequantizedDensity):
            y_obs = (density.check_levels(x) + 0.5) / density.levels
            theta = (0.1 * torch.randn(x.shape, generator=g)).to(y_obs).requires_grad_(True)

            def current() -> Tensor:
                return torch.where(mask, torch.sigmoid(theta), y_obs)

            def objective() -> Tensor:
                s, ld = density.preprocess(current())
                return density.continuous_log_prob(s) + ld
        else:
            theta = torch.where(mask, 0.1 * torch.randn(x.shape, generator=g).to(x), x)
            theta = theta.clone().requires_grad_(True)

            def current() -> Tensor:
                return torch.where(mask, theta, x)

            def objective() -> Tensor:
                return density.log_prob(current())

        opt = torch.optim.Adam([theta], lr=lr)
        with exact_logdet(density):
            for _ in range(steps):
                opt.zero_grad()
                (-objective().sum()).backward()
                opt.step()
        with torch.no_grad():
            out = current()
            if isinstance(density, DequantizedDensity):
                out = torch.where(mask, torch.floor(out * density.levels).clamp(
                    0, density.levels - 1), x.to(out))
        return out.to(x.dtype) if not x.dtype.is_floating_point else out
    finally:
        for p in density.parameters():
            p.requires_grad_(True)


# -- exact evaluation -------------------------------------------------------------------------
@dataclass
class ExactResult:
    """Test NLL (nats per example) with how it was computed."""

    nll: float
    stderr: float
    n: int
    dim: int
    method: str
    bpd: float | None = None
    probe_stderr: float | None = None


def _log_probs(density: Density, data: Tensor, batch_size: int) -> Tensor:
    """``log p`` of ``data`` in chunks of ``batch_size`` on the density's device, on the CPU."""
    device = _device(density)
    return torch.cat([density.log_prob(c.to(device)).detach().cpu()
                      for c in data.split(batch_size)])


def _device(module: torch.nn.Module) -> torch.device:
    first = next(iter(module.parameters()), None)
    if first is None:
        first = next(iter(module.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def exact_evaluate(density: Density, data: Tensor, batch_size: int = 1000,
                   max_exact_dim: int = 64, probes: int = 100) -> ExactResult:
    """Test NLL with the most exact log-determinant the dimension allows.

    - no stochastic part: one pass, "exact (closed-form log-determinant)";
    - stochastic and ``D <= max_exact_dim``: the flows' exact mode (exact traces / Jacobians);
    - otherwise: the per-example log-likelihood averaged over ``probes`` independent probe
      draws (unbiased for unbiased estimators), with the standard error over draws.

    ``stderr`` is the standard error of the mean NLL over examples (probe noise included);
    ``probe_stderr`` the part due to the probes alone. For images the value is the
    dequantization bound (one dequantization draw per pass).
    """
    density.eval()
    dim = int(math.prod(density.event_shape))
    probe_stderr: float | None = None
    stochastic = bool(getattr(density.flow, "logdet_is_estimate", False))
    if not stochastic or dim <= max_exact_dim:
        with exact_logdet(density):
            lp = _log_probs(density, data, batch_size)
        method = ("exact (closed-form log-determinant)" if not stochastic else
                  f"exact log-determinant (exact traces/Jacobians, D={dim} <= {max_exact_dim})")
        nll = -lp.double()
        stderr = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
    else:
        draws = torch.stack([_log_probs(density, data, batch_size) for _ in range(probes)])
        nll = -draws.double().mean(0)  # per example, averaged over the probe draws
        stderr = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
        if probes > 1:  # the part of the uncertainty due to the probes alone
            probe_stderr = float(torch.sqrt(draws.double().var(0).mean() / probes / len(nll)))
        method = (f"stochastic log-determinant averaged over {probes} probe draws "
                  f"(D={dim} > max_exact_dim={max_exact_dim})")
    if isinstance(density, DequantizedDensity):
        method += f"; dequantization bound on {density.levels} levels, one draw of u per pass"
    mean = float(nll.mean())
    bpd = mean / (dim * math.log(2)) if isinstance(density, DequantizedDensity) else None
    return ExactResult(nll=mean, stderr=stderr, n=len(nll), dim=dim, method=method, bpd=bpd,
                       probe_stderr=probe_stderr)
