"""Anomaly scores of a tabular or file run: ``cnf evaluate anomaly RUN`` for vectors.

The score of a row is its log-likelihood under the trained density (``log p(x)``, or
``log p(x | c)`` for a conditional run), reported in the data's original units (the data
module's ``log_prob_offset`` added back), with a left-tail p-value against the validation
rows' log-likelihoods, ``p = (1 + #{val ≤ log p(x)}) / (1 + n_val)``.

Two ways to measure how well the scores separate normal rows from anomalies (AUROC of
``−log p``, ``sklearn.metrics.roc_auc_score``):

- ``--score-file new.csv --label-column is_anomaly``: score a file of your own (same columns
  as in training; the label column is 0 / 1, 1 = anomaly);
- without a file: the test split against copies of it moved ``--shift`` standard deviations
  (of the model's standardized units) along random directions, the context kept.

Per-row scores go to ``RUN/eval/anomaly_scores.csv`` (file row, label, log-likelihood in the
original units, p-value); the summary is printed and saved as ``RUN/eval/anomaly.json``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnf.errors import ConfigError, DataError

if TYPE_CHECKING:  # torch is imported where it is used: `cnf evaluate --help` stays light
    from torch import Tensor

__all__ = ["log_likelihoods", "shifted_copies", "auroc", "evaluate", "add_arguments", "run"]


def log_likelihoods(density: Any, x: Tensor, context: Tensor | None = None,
                    batch_size: int = 2048, exact: bool = True) -> Tensor:
    """``log p(x [| context])`` in the model's units, ``[N]`` (exact log-dets by default)."""
    import torch

    from cnf.flows.base import exact_logdet

    density.eval()
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        cb = None if context is None else context[start:start + batch_size]
        if exact:
            with exact_logdet(density):
                out.append(density.log_prob(xb, cb).detach().cpu())
        else:
            out.append(density.log_prob(xb, cb).detach().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def shifted_copies(x: Tensor, shift: float = 4.0, seed: int = 0) -> Tensor:
    """Copies of ``x`` ``[N, D]`` moved ``shift`` units along a random unit direction each."""
    import torch

    g = torch.Generator().manual_seed(seed)
    d = torch.randn(x.shape, generator=g, dtype=x.dtype)
    return x + shift * d / d.norm(dim=1, keepdim=True)


def auroc(labels: np.ndarray, log_prob: np.ndarray) -> float:
    """AUROC of the anomaly score ``−log p`` for ``labels`` (1 = anomaly)."""
    from sklearn.metrics import roc_auc_score

    if len(set(np.asarray(labels).tolist())) < 2:
        raise DataError("AUROC needs both normal (0) and anomalous (1) rows; the labels hold "
                        "only one class")
    return float(roc_auc_score(labels, -np.asarray(log_prob)))


def _split(dm: Any, name: str) -> tuple[Tensor, Tensor | None]:
    if hasattr(dm, "split_arrays"):
        return dm.split_arrays(name)
    dm.setup("validate" if name == "val" else "test")
    return getattr(dm, f"{name}_set"), None


def _labelled_file(dm: Any, path: str, label_column: str) -> tuple[Tensor, Tensor | None,
                                                                    np.ndarray, np.ndarray]:
    from cnf.data.files import read_table

    if not hasattr(dm, "transform"):
        raise ConfigError("--score-file needs a run trained on a file (cnf.data.files."
                          "FileDataModule); for the built-in sets use the shifted copies")
    table = read_table(path, getattr(dm, "key", None), getattr(dm, "header", None),
                       getattr(dm, "delimiter", None))
    j = table.column(label_column, "label column")
    labels = table.values[:, j]
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"{path}: label column {table.names[j]!r} must hold 0 (normal) or 1 "
                        f"(anomaly) in every row")
    x_names, c_names = dm.x_names, dm.context_names
    xs = [table.column(n) for n in x_names]
    cs = [table.column(n, "context column") for n in c_names]
    for k in xs + cs:
        if not table.is_numeric(k) or not np.isfinite(table.values[:, k]).all():
            bad = np.nonzero(~np.isfinite(table.values[:, k]))[0]
            where = table.where(int(bad[0])) if len(bad) else "a non-numeric row"
            raise DataError(f"{path}: column {table.names[k]!r} has a missing or non-numeric "
                            f"value at {where}; scores need every row")
    x, c = dm.transform(table.values[:, xs], table.values[:, cs] if cs else None)
    return x, c, labels.astype(np.int64), np.arange(table.rows)


def evaluate(density: Any, dm: Any, score_file: str | None = None,
             label_column: str | None = None, shift: float = 4.0, seed: int = 0,
             out_csv: Path | None = None) -> dict[str, Any]:
    """AUROC and p-value flags of a trained ``density`` on ``dm``'s data (see the module
    docstring). Log-likelihoods are reported in the data's original units."""
    import torch

    offset = float(getattr(dm, "log_prob_offset", 0.0) or 0.0)
    x_val, c_val = _split(dm, "val")
    ref = log_likelihoods(density, x_val, c_val) + offset
    if score_file is not None:
        if label_column is None:
            raise ConfigError("--score-file needs --label-column (0 = normal, 1 = anomaly)")
        x, c, labels, rows = _labelled_file(dm, score_file, label_column)
        source = str(score_file)
    else:
        x_test, c_test = _split(dm, "test")
        x = torch.cat([x_test, shifted_copies(x_test, shift, seed)])
        c = None if c_test is None else torch.cat([c_test, c_test])
        labels = np.r_[np.zeros(len(x_test), np.int64), np.ones(len(x_test), np.int64)]
        rows = np.r_[np.arange(len(x_test)), np.arange(len(x_test))]
        source = f"test split + copies shifted by {shift:g} (standardized units)"
    x = x.to(density.base._ref.dtype)
    c = None if c is None else c.to(density.base._ref.dtype)
    lp = (log_likelihoods(density, x, c) + offset).double()
    ref_sorted = torch.sort(ref.double())[0]
    p = ((1 + torch.searchsorted(ref_sorted, lp, right=True)).double()
         / (1 + ref_sorted.numel())).numpy()
    lp_np = lp.numpy()
    if out_csv is not None:
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        with open(out_csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["row", "label", "log_prob", "p_value"])
            for r, lab, v, pv in zip(rows, labels, lp_np, p):
                w.writerow([int(r), int(lab), f"{v:.6g}", f"{pv:.6g}"])
    normal, anomalous = labels == 0, labels == 1
    return {
        "scored": source,
        "units": "original" if offset else "model",
        "n_normal": int(normal.sum()), "n_anomalous": int(anomalous.sum()),
        "auroc": auroc(labels, lp_np),
        "flagged_p<0.05_normal": float((p[normal] < 0.05).mean()) if normal.any() else None,
        "flagged_p<0.05_anomalous": float((p[anomalous] < 0.05).mean()) if anomalous.any() else None,
        "mean_nll_normal": float(-lp_np[normal].mean()) if normal.any() else None,
        "mean_nll_anomalous": float(-lp_np[anomalous].mean()) if anomalous.any() else None,
        "scores_csv": None if out_csv is None else str(out_csv),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``cnf evaluate anomaly``: the image corruptions' and the vectors'."""
    from cnf.evaluate.commands import anomaly as image_anomaly

    image_anomaly.add_arguments(parser.add_argument_group("image runs"))
    g = parser.add_argument_group("vector runs (tabular / file data)")
    g.add_argument("--score-file", default=None,
                   help="a file to score, with the training file's columns (default: the test "
                        "split and shifted copies of it)")
    g.add_argument("--label-column", default=None,
                   help="the score file's 0/1 column (1 = anomaly) for the AUROC")
    g.add_argument("--shift", type=float, default=4.0,
                   help="without --score-file: how far (standardized units) the anomalous "
                        "copies of the test rows are moved (default: 4)")


def restore_data_state(dm: Any, run_dir: str | Path, checkpoint: str = "best",
                       trust: bool = False) -> None:
    """Load the data module's saved state (e.g. the training standardization) from the run's
    checkpoint, when it has one."""
    from cnf.checkpoint import load_checkpoint
    from cnf.rundir import RunDir

    run = RunDir(run_dir)
    ckpt = next((c for c in (run.checkpoint(checkpoint), run.checkpoint("last"))
                 if c.is_file()), None)
    if ckpt is None or not hasattr(dm, "load_state_dict"):
        return
    state = load_checkpoint(ckpt, trust=trust, trust_option="--trust-checkpoint")
    key = type(dm).__qualname__
    if key in state:
        dm.load_state_dict(state[key])


def run(args: argparse.Namespace, module: Any = None, dm: Any = None) -> dict[str, Any]:
    """``cnf evaluate anomaly RUN``: image runs go to the corruption test
    (:mod:`cnf.evaluate.commands`), vector runs are scored here. Loads the run unless given."""
    import torch

    from cnf.dequantization import DequantizedDensity
    from cnf.evaluate.loading import load_run, output_dir

    trust = getattr(args, "trust_checkpoint", False)
    if module is None or dm is None:
        torch.manual_seed(args.seed)
        module, dm = load_run(args.run, args.checkpoint, trust=trust)
    if isinstance(module.density, DequantizedDensity):
        from cnf.evaluate.commands import anomaly as image_anomaly

        return image_anomaly.run(args)
    restore_data_state(dm, args.run, args.checkpoint, trust=trust)
    out = output_dir(args.run) / "anomaly_scores.csv"
    return {"results": evaluate(module.density, dm, args.score_file, args.label_column,
                                args.shift, args.seed, out)}
