"""Per-example outputs of ``cnf predict``: one file per call under ``<run>/predictions/``.

Columns (one row per predicted example, in the predict loader's order)::

    row             the example's row in the original data (the data module's
                    ``predict_index`` when it has one, else 0, 1, 2, ...)
    log_likelihood  log p(x) in nats, in the data's original units (plus the data module's
                    ``log_prob_offset``, 0 by default)
    nll_per_dim     -log_likelihood / number of dimensions
    p_value         (1 + #{validation examples with log-likelihood <= this one}) / (n_val + 1):
                    small values flag examples less likely than almost all validation data

A JSON file beside it (same name, ``.json``) records the checkpoint, data, row counts and
the columns. Files are never overwritten (``-2``, ``-3``... are added to the name).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor

from cnf.errors import ConfigError

__all__ = ["PredictionWriter", "p_values", "write_table"]

COLUMNS = ("row", "log_likelihood", "nll_per_dim", "p_value")


def p_values(log_likelihood: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Empirical lower-tail p-values of ``log_likelihood`` against ``reference`` values:
    ``(1 + #{reference <= x}) / (n + 1)``.

    >>> p_values(np.array([0.0, 10.0]), np.array([1.0, 2.0, 3.0])).tolist()
    [0.25, 1.0]
    """
    ref = np.sort(np.asarray(reference, dtype=np.float64))
    below = np.searchsorted(ref, np.asarray(log_likelihood, dtype=np.float64), side="right")
    return (1.0 + below) / (len(ref) + 1.0)


def write_table(path: Path, columns: dict[str, np.ndarray]) -> None:
    """Write ``columns`` as CSV (``.csv``) or Parquet (``.parquet``, needs pandas and pyarrow)."""
    if path.suffix == ".parquet":
        try:
            import pandas as pd

            pd.DataFrame(columns).to_parquet(path, index=False)
        except ImportError as exc:
            raise ConfigError(f"--run.predictions_format parquet needs pandas and pyarrow "
                              f"({exc}); install them or use csv") from None
        return
    names = list(columns)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for values in zip(*(columns[n].tolist() for n in names)):
            writer.writerow(values)


def _x(pl_module: L.LightningModule, batch: Any) -> Tensor:
    getter = getattr(pl_module, "batch_data", None)
    if callable(getter):
        return getter(batch)
    return batch[0] if isinstance(batch, (list, tuple)) else batch


class PredictionWriter(L.Callback):
    """Collect ``predict_step`` outputs (one log-likelihood per example) and write them, with
    p-values against the validation set, to ``path``.

    Args:
        path: output file (``.csv`` or ``.parquet``); it must not exist.
        extra: fields for the JSON sidecar (checkpoint, data, run).
    """

    def __init__(self, path: Path | None, extra: dict[str, Any] | None = None):
        super().__init__()
        self.path = Path(path) if path is not None else None
        self.extra = extra or {}
        self._out: list[Tensor] = []
        self._dim = 1
        self.written: Path | None = None

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1:
            raise ConfigError("cnf predict writes one file in the loader's order; run it on "
                              "one device (--trainer.devices 1)")
        self._out = []

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                             outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        x = _x(pl_module, batch)
        if not isinstance(outputs, Tensor) or outputs.ndim != 1 or len(outputs) != len(x):
            shape = tuple(outputs.shape) if isinstance(outputs, Tensor) else type(outputs).__name__
            raise ConfigError(
                f"cnf predict writes one log-likelihood per example; "
                f"{type(pl_module).__name__}.predict_step returned {shape} for a batch of "
                f"{len(x)}: use a density model (DensityEstimation)")
        self._dim = math.prod(x.shape[1:]) or 1
        self._out.append(outputs.detach().double().cpu())

    def _validation_log_likelihood(self, trainer: L.Trainer,
                                   pl_module: L.LightningModule) -> np.ndarray | None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "val_dataloader"):
            return None
        dm.setup("validate")
        loader = dm.val_dataloader()
        out = []
        with torch.no_grad():
            for i, batch in enumerate(loader):
                batch = trainer.strategy.batch_to_device(batch)
                out.append(pl_module.predict_step(batch, i).detach().double().cpu())
        return torch.cat(out).numpy() if out else None

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.path is None:
            return
        dm = trainer.datamodule
        offset = float(getattr(dm, "log_prob_offset", 0.0) or 0.0)
        ll = torch.cat(self._out).numpy() + offset if self._out else np.zeros(0)
        index = getattr(dm, "predict_index", None)
        rows = np.arange(len(ll)) if index is None else np.asarray(index, dtype=np.int64)
        if len(rows) != len(ll):
            raise ConfigError(f"the data module's predict_index has {len(rows)} entries for "
                              f"{len(ll)} predicted examples")
        val = self._validation_log_likelihood(trainer, pl_module)
        columns = {"row": rows, "log_likelihood": ll, "nll_per_dim": -ll / self._dim,
                   "p_value": (p_values(ll, val + offset) if val is not None
                               else np.full(len(ll), np.nan))}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_table(self.path, columns)
        meta = dict(self.extra, file=str(self.path), rows=len(ll), dimensions=self._dim,
                    validation_rows=0 if val is None else len(val), log_prob_offset=offset,
                    columns=list(COLUMNS))
        self.path.with_suffix(".json").write_text(json.dumps(meta, indent=2, default=str))
        self.written = self.path
        print(f"cnf: wrote {len(ll)} per-example log-likelihoods to {self.path}",
              file=sys.stderr)
