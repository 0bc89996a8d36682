"""Moved to :mod:`cnf.dequantization` (a density is a model, and data never builds models).

This alias keeps old imports and configs working; new code and configs use
``cnf.dequantization``."""

from cnf.dequantization import (  # noqa: F401
    DequantizedDensity,
    Dequantizer,
    UniformDequantizer,
    VariationalDequantizer,
    bits_per_dim,
)
