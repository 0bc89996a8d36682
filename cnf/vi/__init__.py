"""Variational inference with flows: unnormalized targets (:mod:`cnf.vi.targets`) and the
estimators of the free energy, the ELBO, log Z and the effective sample size
(:mod:`cnf.vi.estimators`). The Lightning module is :class:`cnf.lightning.vi.ReverseKL`."""
