"""LightningModules, DataModule glue and callbacks. Everything that knows about Lightning."""

from cnf.lightning.density import DensityEstimation

__all__ = ["DensityEstimation"]
