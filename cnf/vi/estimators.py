"""Estimators for reverse-KL variational inference with an unnormalized target
``p(z) = exp(-U(z)) / Z``, from samples ``z_i ~ q`` with their ``log q(z_i)``.

With ``log w_i = -U(z_i) - log q(z_i)`` (log importance weights):

- free energy  ``F = E_q[log q(z) + U(z)] = KL(q ‖ p) - log Z``  (what training minimizes)
- ELBO         ``-F ≤ log Z``                                    (equality iff q = p)
- log Z        ``log (1/N Σ_i w_i)``: consistent; biased low for finite N (Jensen), and never
  below the ELBO in expectation
- ESS          ``(Σ w_i)² / Σ w_i²``, reported as the fraction ``ESS / N`` in (0, 1]

Example::

    >>> log_w = torch.zeros(100)
    >>> round(float(importance_log_z(log_w)), 6), round(float(effective_sample_size(log_w)), 6)
    (0.0, 1.0)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["free_energy", "importance_log_z", "effective_sample_size"]


def free_energy(log_q: Tensor, energy: Tensor) -> Tensor:
    """Monte Carlo ``E_q[log q + U]`` from per-sample ``log q`` and ``U`` (``[N]`` each)."""
    return (log_q + energy).mean()


def importance_log_z(log_w: Tensor) -> Tensor:
    """``log (1/N Σ exp(log_w))``, computed stably; ``log_w`` is ``[N]``."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def effective_sample_size(log_w: Tensor) -> Tensor:
    """Kish's effective sample size of the weights as a fraction of N: ``(Σw)² / (N Σw²)``."""
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / log_w.shape[0]
