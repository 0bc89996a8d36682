"""Errors a user can cause. Every message says what to change.

All of them derive from :class:`CNFError`, so ``except cnf.errors.CNFError`` catches any
failure that is the user's to fix (as opposed to a bug in cnf).
"""

from __future__ import annotations


class CNFError(Exception):
    """Base class of every error cnf raises on purpose."""


class ConfigError(CNFError, ValueError):
    """A configuration value is invalid (unknown name, wrong class path, bad range)."""


class ShapeError(CNFError, ValueError):
    """Data does not have the shape the model was built for."""


class NonFiniteError(CNFError, FloatingPointError):
    """A batch, a loss or a state became NaN or infinite."""


class DataError(CNFError, FileNotFoundError):
    """A dataset file is missing or malformed; the message says where it is expected."""


class SolverError(CNFError, RuntimeError):
    """An ODE solve failed: NFE budget exceeded, step size underflow or a non-finite state."""


class InverseError(CNFError, RuntimeError):
    """A numerical inverse (fixed point, bisection, Newton) did not reach its tolerance."""


class UntrustedCheckpointError(CNFError, RuntimeError):
    """A checkpoint holds pickled Python objects, which run code when loaded; the message
    names the option that loads it anyway, for files from a source you trust."""
