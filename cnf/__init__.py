"""cnf: continuous normalizing flows (FFJORD, i-ResNet / Residual Flows) and discrete-flow
baselines behind one contract, trained with Lightning.

The layers, from the bottom up: ``cnf.flows`` (bijections, pure PyTorch), ``cnf.ode``
(neural-ODE machinery), ``cnf.distributions`` (base distributions and ``Density``),
``cnf.data`` (datasets and DataModules), ``cnf.lightning`` (LightningModules and callbacks),
``cnf.cli`` (the ``cnf`` command) and ``cnf.report`` (comparison reports).
"""

__version__ = "0.1.0"
