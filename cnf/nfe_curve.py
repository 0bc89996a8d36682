"""``cnf evaluate nfe-curve RUN``: likelihood and sample quality against the cost of the solve.

A trained CNF (by maximum likelihood, flow matching, or both) is re-solved with

- ``rk4`` at 2, 4, 8, 16, 32, 64 steps over ``[0, T]`` (4 function evaluations per step), and
- ``dopri5`` at rtol = atol = 1e-3, 1e-4, 1e-5, 1e-6 (adaptive),

and at each setting we measure, on the run's test split:

- ``nll``: mean negative log-likelihood (nats; exact trace when the dimension allows,
  ``max_exact_dim``), with its standard error ``nll_se``;
- ``nfe``: function evaluations of one likelihood solve, summed over the CNF blocks;
- ``energy``: the energy distance between ``n_samples`` model samples (solved with the same
  setting) and as many held-out test points,
  ``D² = 2 E‖X − Y‖ − E‖X − X′‖ − E‖Y − Y′‖`` (Székely & Rizzo, 2013; 0 iff the two
  distributions agree; the V-statistic, so two samples of one distribution give a small
  positive value, about 2× its value at 2× the sample size), on flattened data.

The curve (``nfe_curve.md`` table, ``nfe_curve.json`` and ``nfe_curve.png``) goes to the run's
``eval/nfe_curve/``. NFE at equal NLL is how FM, OT-CFM, RNODE and plain FFJORD compare.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RK4_STEPS = (2, 4, 8, 16, 32, 64)
DOPRI_TOLS = (1e-3, 1e-4, 1e-5, 1e-6)

__all__ = ["CurvePoint", "nfe_curve", "energy_distance", "format_table", "add_arguments", "run",
           "RK4_STEPS", "DOPRI_TOLS"]


@dataclass
class CurvePoint:
    solver: str
    setting: str
    nfe: float
    nll: float
    nll_se: float
    energy: float | None
    seconds: float


def energy_distance(x: Any, y: Any) -> float:
    """Squared energy distance between the samples ``x [N, ...]`` and ``y [M, ...]``."""
    import torch

    x = x.reshape(x.shape[0], -1).double()
    y = y.reshape(y.shape[0], -1).double()
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).mean()
    yy = torch.cdist(y, y).mean()
    return float(2 * xy - xx - yy)


def nfe_curve(density: Any, test: Any, rk4_steps: tuple[int, ...] = RK4_STEPS,
              dopri_tols: tuple[float, ...] = DOPRI_TOLS, n_samples: int = 2000,
              batch_size: int = 2000, max_exact_dim: int = 64, seed: int = 0) -> list[CurvePoint]:
    """The curve for ``density`` (a ``Density`` whose flow holds CNF blocks) on the held-out
    ``test`` tensor; see the module docstring."""
    import time

    import torch

    from cnf.flows.base import exact_logdet, gather
    from cnf.flows.continuous import CNF, use_eval_solver
    from cnf.ode import SolverConfig

    blocks = [m for m in density.modules() if isinstance(m, CNF)]
    if not blocks:
        from cnf.errors import ConfigError

        raise ConfigError("nfe-curve needs a run whose flow contains CNF blocks (CNF, FFJORD, "
                          "ImageCNF, FFJORDMultiscale)")
    T = max(float(b.T.detach()) for b in blocks)
    density.eval()
    dim = int(math.prod(density.event_shape))
    exact = dim <= max_exact_dim
    settings = [("rk4", f"{n} steps", SolverConfig(method="rk4", step_size=T / n, adjoint=False))
                for n in rk4_steps]
    settings += [("dopri5", f"tol {tol:g}", SolverConfig(method="dopri5", rtol=tol, atol=tol,
                                                          adjoint=False)) for tol in dopri_tols]
    g = torch.Generator().manual_seed(seed)
    ref = test[torch.randperm(len(test), generator=g)[:n_samples]]
    points = []
    for solver, label, config in settings:
        start = time.perf_counter()
        lps, nfes = [], []
        with use_eval_solver(density, config):
            for chunk in test.split(batch_size):
                if exact:
                    with exact_logdet(density):
                        lps.append(density.log_prob(chunk).detach())
                else:
                    lps.append(density.log_prob(chunk).detach())
                nfes.append(gather(density, "stats").get("nfe", 0.0))
            torch.manual_seed(seed)
            samples = density.sample(len(ref)).detach()
        nll = -torch.cat(lps).double()
        energy = (energy_distance(samples, ref.to(samples.dtype))
                  if torch.isfinite(samples).all() else None)
        points.append(CurvePoint(solver, label, float(sum(nfes) / len(nfes)), float(nll.mean()),
                                 float(nll.std() / math.sqrt(len(nll))), energy,
                                 time.perf_counter() - start))
    return points


def format_table(points: list[CurvePoint]) -> str:
    lines = ["| solver | setting | NFE | NLL (nats) | ± se | energy distance | seconds |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for p in points:
        e = "n/a" if p.energy is None else f"{p.energy:.4f}"
        lines.append(f"| {p.solver} | {p.setting} | {p.nfe:.0f} | {p.nll:.4f} | {p.nll_se:.4f} "
                     f"| {e} | {p.seconds:.1f} |")
    return "\n".join(lines)


def plot(points: list[CurvePoint], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for solver, marker in (("rk4", "o-"), ("dopri5", "s-")):
        pts = [p for p in points if p.solver == solver]
        axes[0].plot([p.nfe for p in pts], [p.nll for p in pts], marker, label=solver)
        axes[1].plot([p.nfe for p in pts], [p.energy if p.energy is not None else float("nan")
                                            for p in pts], marker, label=solver)
    for ax, name in zip(axes, ("test NLL (nats)", "energy distance to test data")):
        ax.set_xscale("log")
        ax.set_xlabel("NFE per solve")
        ax.set_ylabel(name)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rk4-steps", type=int, nargs="+", default=list(RK4_STEPS),
                        help="rk4 step counts over [0, T] (default: 2 4 8 16 32 64)")
    parser.add_argument("--dopri-tols", type=float, nargs="+", default=list(DOPRI_TOLS),
                        help="dopri5 rtol = atol values (default: 1e-3 1e-4 1e-5 1e-6)")
    parser.add_argument("--n-samples", type=int, default=2000,
                        help="model samples (and test points) for the energy distance")
    parser.add_argument("--max-test", type=int, default=5000, help="test examples scored")
    parser.add_argument("--max-exact-dim", type=int, default=64,
                        help="exact trace up to this dimension, Hutchinson above (default: 64)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Load the run, compute the curve, write it under ``<run>/eval/nfe_curve/``."""
    import torch

    from cnf.evaluate.loading import load_run, output_dir

    torch.manual_seed(args.seed)
    module, dm = load_run(args.run, args.checkpoint, trust=getattr(args, "trust_checkpoint", False))
    dm.setup("test")
    test = dm.test_set
    test = test if isinstance(test, torch.Tensor) else torch.as_tensor(test)
    test = test[: args.max_test].float()
    points = nfe_curve(module.density, test, tuple(args.rk4_steps), tuple(args.dopri_tols),
                       n_samples=args.n_samples, max_exact_dim=args.max_exact_dim, seed=args.seed)
    out = output_dir(args.run) / "nfe_curve"
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(points)
    (out / "nfe_curve.md").write_text(table + "\n")
    result = {"command": "nfe-curve", "run": str(args.run), "n_test": len(test),
              "points": [asdict(p) for p in points],
              "plot": str(plot(points, out / "nfe_curve.png", title=str(args.run)))}
    (out / "nfe_curve.json").write_text(json.dumps(result, indent=2))
    print(table)
    return result
