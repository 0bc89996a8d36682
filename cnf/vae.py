"""A Bernoulli VAE whose approximate posterior is a normalizing flow (pure PyTorch).

The encoder maps ``x`` to features ``h`` and the base Gaussian ``q₀(z₀|x) = N(μ(h), σ(h)²)``;
a flow pushes ``z₀`` to ``z_K`` (its ``inverse``, the generative direction) so that::

    log q_K(z_K|x) = log q₀(z₀|x) - log|det ∂z_K/∂z₀|

    -ELBO(x) = E_q[-log p(x|z_K)] + E_q[log q_K(z_K|x) - log p(z_K)]     (recon + KL)
    -log p(x) ≈ -log (1/k) Σ_j p(x, z_j) / q_K(z_j|x),   z_j ~ q_K(·|x)   (importance weighted)

with ``p(z) = N(0, I)`` and a Bernoulli decoder. Posteriors (``posterior=``):

- ``diagonal``: no flow (the VAE of Kingma & Welling).
- amortized (van den Berg et al., 2018): a linear head on ``h`` outputs every flow parameter
  per data point; ``planar``, ``radial`` (Rezende & Mohamed, 2015),
  ``sylvester_orthogonal``, ``sylvester_householder`` (``Planar(amortized=True)``,
  ``Radial(amortized=True)``, :class:`cnf.flows.sylvester.Sylvester`, stacked by
  :class:`cnf.flows.amortized.AmortizedChain`).
- conditioned on ``h`` (the flow gets ``context = h``): ``iaf`` (Kingma et al., 2016;
  ``IAF(context_dim=hidden, gated=True)``),
  ``realnvp`` (RealNVP couplings with context), ``ffjord`` (``num_flows`` CNF blocks,
  :class:`cnf.flows.continuous.CNF` with ``context_dim = hidden``: h enters the ODE net's
  input; ``flow_options`` go to the CNF, e.g. ``solver: {...}``), or
  ``flow``: any :class:`cnf.flows.base.Flow` passed as ``flow=`` whose ``context_dim``
  equals ``hidden``.

The KL term is the single-sample Monte Carlo estimate for every posterior (as in the
Sylvester-flows code), so all posteriors share one estimator.

Example::

    >>> vae = FlowVAE(data_dim=64, latent_dim=8, posterior="planar", num_flows=4)
    >>> x = torch.bernoulli(torch.full((5, 64), 0.3))
    >>> recon, kl = vae.elbo_terms(x)
    >>> (recon + kl).shape
    torch.Size([5])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnf.errors import ConfigError, ShapeError
from cnf.flows.amortized import AmortizedChain
from cnf.flows.autoregressive import IAF
from cnf.flows.base import Chain, Flow
from cnf.flows.nets import activation
from cnf.flows.planar import Planar
from cnf.flows.radial import Radial
from cnf.flows.sylvester import Sylvester

__all__ = ["FlowVAE", "POSTERIORS"]

POSTERIORS = ("diagonal", "planar", "radial", "sylvester_orthogonal", "sylvester_householder",
              "iaf", "realnvp", "ffjord", "flow")
_LOG2PI = math.log(2 * math.pi)


def _mlp(sizes: list[int], act: str, last_act: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2 or last_act:
            layers.append(activation(act))
    return nn.Sequential(*layers)


class FlowVAE(nn.Module):
    """Bernoulli VAE with MLP encoder/decoder and a flow posterior (see the module docstring).

    Args:
        data_dim: number of binary pixels (64 for 8×8 digits, 784 for MNIST).
        latent_dim: dimension of z.
        hidden, depth, act: width, hidden layers and activation of encoder and decoder.
        posterior: one of ``POSTERIORS``.
        num_flows: K, the number of flow layers (blocks for ``realnvp``).
        num_columns: M for ``sylvester_orthogonal`` (default: ``latent_dim``).
        num_householder: reflections per layer for ``sylvester_householder``.
        flow_hidden: hidden width of IAF's MADE / RealNVP's conditioners / the CNF's ODE net
            (two layers).
        flow_options: extra keyword arguments of the ``ffjord`` posterior's CNF blocks
            (default: exact trace, ``solver: {method: dopri5, rtol: 1e-5, atol: 1e-5,
            adjoint: false}``, T = 0.5).
        flow: the flow for ``posterior="flow"`` (context = encoder features, ``[B, hidden]``).
    """

    def __init__(self, data_dim: int = 64, latent_dim: int = 8, hidden: int = 256, depth: int = 2,
                 act: str = "elu", posterior: str = "diagonal", num_flows: int = 4,
                 num_columns: int | None = None, num_householder: int = 4,
                 flow_hidden: int = 64, flow: Flow | None = None,
                 flow_options: dict | None = None):
        super().__init__()
        if posterior not in POSTERIORS:
            raise ConfigError(f"unknown posterior {posterior!r}; choose one of {list(POSTERIORS)}")
        if (posterior == "flow") != (flow is not None):
            raise ConfigError("pass `flow` exactly when posterior='flow'")
        if num_flows < 1 and posterior != "diagonal":
            raise ConfigError(f"num_flows must be >= 1, got {num_flows}")
        self.data_dim, self.latent_dim, self.hidden = data_dim, latent_dim, hidden
        self.posterior = posterior
        self.encoder = _mlp([data_dim] + [hidden] * depth, act, last_act=True)
        self.mean = nn.Linear(hidden, latent_dim)
        self.log_std = nn.Linear(hidden, latent_dim)
        self.decoder = _mlp([latent_dim] + [hidden] * depth + [data_dim], act, last_act=False)
        self.flow: Flow | None = None
        self.amortize: nn.Linear | None = None
        d = latent_dim
        if posterior in ("planar", "radial", "sylvester_orthogonal", "sylvester_householder"):
            layers = {
                "planar": lambda: Planar(d, amortized=True),
                "radial": lambda: Radial(d, amortized=True),
                "sylvester_orthogonal": lambda: Sylvester(d, num_columns or d),
                "sylvester_householder": lambda: Sylvester(
                    d, variant="householder", num_householder=num_householder),
            }[posterior]
            self.flow = AmortizedChain([layers() for _ in range(num_flows)])
            self.amortize = nn.Linear(hidden, self.flow.param_dim)
        elif posterior == "iaf":
            if d < 2:
                raise ConfigError("posterior='iaf' needs latent_dim >= 2")
            # the IAF paper's gated update, one hidden layer pair of width flow_hidden
            self.flow = IAF(d, num_transforms=num_flows, hidden=(flow_hidden, flow_hidden),
                            context_dim=hidden, act="elu", gated=True)
        elif posterior == "realnvp":
            from cnf.flows.coupling import RealNVP

            if d < 2:
                raise ConfigError("posterior='realnvp' needs latent_dim >= 2")
            self.flow = RealNVP(d, num_layers=num_flows, hidden=flow_hidden, context_dim=hidden)
        elif posterior == "ffjord":
            from cnf.flows.continuous import CNF

            options = {"divergence": "exact", "T": 0.5,
                       "solver": {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5, "adjoint": False},
                       **(flow_options or {})}
            self.flow = Chain([CNF(d, context_dim=hidden, hidden=(flow_hidden, flow_hidden),
                                   **options) for _ in range(num_flows)])
        elif posterior == "flow":
            self.flow = flow

    # -- pieces ----------------------------------------------------------------------------
    def _check(self, x: Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.data_dim:
            raise ShapeError(f"the VAE expects flattened data [batch, {self.data_dim}], got "
                             f"{list(x.shape)}; set model data_dim to the data's pixel count")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(μ, σ, h)``: the base Gaussian's mean and std ``[B, L]`` and features ``[B, H]``."""
        h = self.encoder(x)
        std = F.softplus(self.log_std(h)) + 1e-4
        return self.mean(h), std, h

    def decode_logits(self, z: Tensor) -> Tensor:
        """Bernoulli logits of ``p(x|z)``, ``[B, data_dim]``."""
        return self.decoder(z)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x|z)`` summed over pixels, ``[B]``."""
        return -F.binary_cross_entropy_with_logits(self.decode_logits(z), x, reduction="none").sum(1)

    @staticmethod
    def log_prior(z: Tensor) -> Tensor:
        return -0.5 * (z.pow(2) + _LOG2PI).sum(1)

    def sample_posterior(self, x: Tensor, n: int = 1) -> tuple[Tensor, Tensor]:
        """``n`` samples of ``q_K(z|x)`` per input and their log-density: ``z`` is
        ``[n·B, L]`` ordered sample-major (``z[j·B + b]`` belongs to ``x[b]``), ``log q`` ``[n·B]``."""
        self._check(x)
        mu, std, h = self.encode(x)
        if n > 1:
            mu, std, h = (t.repeat(n, 1) for t in (mu, std, h))
        eps = torch.randn_like(mu)
        z0 = mu + std * eps
        log_q = -0.5 * (eps.pow(2) + _LOG2PI).sum(1) - torch.log(std).sum(1)
        if self.flow is None:
            return z0, log_q
        context = self.amortize(h) if self.amortize is not None else h
        zk, logdet = self.flow.inverse(z0, context)
        return zk, log_q - logdet

    def log_q(self, z: Tensor, x: Tensor) -> Tensor:
        """``log q_K(z|x)`` of given latents ``z`` ``[B, L]`` (one per row of ``x``), through the
        flow's ``forward`` (numerical for planar and Sylvester), ``[B]``."""
        self._check(x)
        mu, std, h = self.encode(x)
        logdet = z.new_zeros(z.shape[0])
        if self.flow is not None:
            context = self.amortize(h) if self.amortize is not None else h
            z, logdet = self.flow(z, context)
        eps = (z - mu) / std
        return -0.5 * (eps.pow(2) + _LOG2PI).sum(1) - torch.log(std).sum(1) + logdet

    # -- objectives ------------------------------------------------------------------------
    def elbo_terms(self, x: Tensor, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        """Per-example reconstruction ``E_q[-log p(x|z)]`` and KL ``E_q[log q(z|x) - log p(z)]``
        (nats, ``[B]`` each), Monte Carlo with ``n_samples`` samples."""
        z, log_q = self.sample_posterior(x, n_samples)
        xr = x.repeat(n_samples, 1) if n_samples > 1 else x
        recon = -self.log_likelihood(xr, z)
        kl = log_q - self.log_prior(z)
        b = x.shape[0]
        return recon.reshape(n_samples, b).mean(0), kl.reshape(n_samples, b).mean(0)

    def importance_nll(self, x: Tensor, k: int = 1000, chunk: int = 100) -> Tensor:
        """``-log (1/k) Σ_j p(x, z_j) / q(z_j|x)`` per example, ``[B]`` (nats), ``k`` samples
        drawn ``chunk`` at a time. An upper bound on ``-log p(x)`` in expectation, tight as
        ``k → ∞`` (Burda et al., 2016)."""
        b = x.shape[0]
        parts = []
        left = k
        while left > 0:
            m = min(chunk, left)
            z, log_q = self.sample_posterior(x, m)
            log_w = self.log_likelihood(x.repeat(m, 1), z) + self.log_prior(z) - log_q
            parts.append(log_w.reshape(m, b))
            left -= m
        log_w = torch.cat(parts, 0)
        return -(torch.logsumexp(log_w, 0) - math.log(k))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Pixel probabilities of ``n`` images from the prior, ``[n, data_dim]``."""
        z = torch.randn(n, self.latent_dim, device=self.mean.weight.device,
                        dtype=self.mean.weight.dtype)
        return torch.sigmoid(self.decode_logits(z))
