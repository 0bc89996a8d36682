"""Neural-ODE machinery for continuous normalizing flows.

The public surface is small, like torchdiffeq's: :class:`ODENet` (time-conditioned MLPs
with FFJORD's layer types), :class:`ConvODENet` (their conv counterpart for images),
:class:`SolverConfig` (solver, tolerances, adjoint, NFE budget, minimum step) and :func:`odeint_cnf` (integrates ``[z, Δlog p, regularizers]``, counts NFE
and raises :class:`cnf.errors.SolverError` instead of hanging). The divergence estimators
live in :mod:`cnf.ode.divergence`, the flow-matching paths in :mod:`cnf.ode.matching`;
activations and their forward-mode derivatives come from the leaf :mod:`cnf.nn`
(``cnf.ode`` imports nothing from ``cnf.flows``).
"""

from cnf.ode.conv import CONV_LAYER_TYPES, ConvODENet
from cnf.ode.nets import LAYER_TYPES, ODENet
from cnf.ode.solve import NFECounter, SolverConfig, odeint_cnf

__all__ = ["ODENet", "LAYER_TYPES", "ConvODENet", "CONV_LAYER_TYPES", "SolverConfig", "NFECounter",
           "odeint_cnf"]
