"""Evaluating trained flows: sampling, interpolation, anomaly scores, inpainting and exact
test likelihoods.

- :mod:`cnf.evaluate.library` — the functions, on any :class:`cnf.distributions.Density`;
- :mod:`cnf.evaluate.loading` — a finished run rebuilt from its config and checkpoint;
- :mod:`cnf.evaluate.cli` — ``cnf evaluate`` (light: imports torch only to do the work);
- :mod:`cnf.evaluate.commands` — its built-in subcommands.

The public names of the first two (and ``main`` of the CLI) are importable from here; they
are loaded on first use, so importing ``cnf.evaluate`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_LIBRARY = ("sample", "encode", "decode", "interpolate", "log_likelihoods", "p_values",
            "anomaly_scores", "corrupt", "anomaly_demo", "inpaint", "ExactResult",
            "exact_evaluate")
_HOMES = {**{name: "cnf.evaluate.library" for name in _LIBRARY},
          "load_run": "cnf.evaluate.loading", "output_dir": "cnf.evaluate.loading",
          "main": "cnf.evaluate.cli", "COMMANDS": "cnf.evaluate.cli"}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'cnf.evaluate' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
