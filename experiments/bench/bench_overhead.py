"""Training-loop overhead: `cnf fit` against a plain PyTorch loop over the same Density.

For each workload the experiment config is instantiated once for the plain loop (same
model, same seed, same data module, same optimizer from ``configure_optimizers``; the loop
iterates the data module's own loaders from the global random state ``cnf fit`` starts
with, so both sides see the same batches: the val/nll columns must agree) and run
as ``cnf fit`` in-process (``cnf.cli.run``; W&B off, no test after fit, line progress,
checkpoints and the run summary on, as a user gets them). Both sides run the same number
of optimisation steps with the same validation schedule (every ``val_check_interval``
steps over the whole validation set, exact log-determinants, as ``DensityEstimation``
does). The two sides alternate, pair by pair, so background load hits both alike.

Both sides are timed over the training window (``cnf``: Lightning's ``on_train_start`` to
``on_train_end``, every step, validation, checkpoint, log and progress line inside; setup
before it and the final plot after it left out; plain: first step to last validation), in
CPU time of the process and in wall time. On a loaded machine (several jobs on 2 cores)
wall time mostly measures the wait for a core; the CPU-time ratio is the one to read.

``--profile`` adds one cProfile pass of each side and prints, per bucket (data loading,
``self.log``, finite checks, stats gathering, callbacks, progress, checkpointing,
loggers, validation, model forward/backward/optimizer), the seconds per step of each side
and the difference; cProfile inflates Python-heavy buckets, so read the shares, not the
absolute figures.

Usage:
    python experiments/bench/bench_overhead.py                 # all workloads, 2 pairs each
    python experiments/bench/bench_overhead.py --only realnvp --steps 500 --repeats 1
    python experiments/bench/bench_overhead.py --profile --repeats 1
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import inspect
import io
import json
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

import torch  # noqa: E402

from cnf.cli import run as cnf_run  # noqa: E402
from cnf.data.datamodule import TensorDataModule  # noqa: E402
from cnf.flows.base import exact_logdet  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# the configs to run (BENCH_CONFIGS: another checkout's configs/, to bench an older version)
CONFIGS = Path(os.environ.get("BENCH_CONFIGS", ROOT / "configs"))
FLOW = "--model.init_args.density.init_args.flow.init_args."
# name -> (experiment config, overrides, default steps)
WORKLOADS: dict[str, tuple[str, list[str], int]] = {
    "realnvp": ("toy_realnvp", [], 500),
    "maf": ("toy_maf", [], 500),
    "nsf": ("toy_nsf", [], 500),
    "ffjord_rk4": ("toy_ffjord", [FLOW + "solver={method: rk4, step_size: 0.125, adjoint: false}"],
                   500),
    "maf_tab30": ("breast_cancer_maf", [], 500),
}


def _overrides(name: str) -> list[str]:
    overrides = WORKLOADS[name][1]
    from cnf.flows.continuous import FFJORD

    if name == "ffjord_rk4" and isinstance(inspect.signature(FFJORD).parameters["solver"].default, str):
        # FFJORD before the SolverConfig argument (to bench an older checkout)
        overrides = [FLOW + "solver=rk4", FLOW + "step_size=0.125", FLOW + "adjoint=false"]
    return overrides


def _args(name: str, steps: int, root: str, run_name: str) -> list[str]:
    cfg = WORKLOADS[name][0]
    return ["--config", str(CONFIGS / "experiment" / f"{cfg}.yaml"), *_overrides(name),
            f"--trainer.max_steps={steps}", f"--run.root={root}", "--run.wandb=disabled",
            "--run.test_after_fit=false", "--run.progress=lines", f"--run.name={run_name}"]


class _Window:
    """Wall and CPU seconds from the start of training to its end (every step, validation
    and checkpoint inside; setup before and the final plot after left out)."""

    def __init__(self, profiler: cProfile.Profile | None = None):
        import lightning as L

        class Timer(L.Callback):
            def on_train_start(cb, trainer, pl_module):
                if profiler is not None:
                    profiler.enable()
                self.t0 = (time.perf_counter(), time.process_time())

            def on_train_end(cb, trainer, pl_module):
                self.t1 = (time.perf_counter(), time.process_time())
                if profiler is not None:
                    profiler.disable()

        self.callback = Timer()

    def ms(self, steps: int) -> tuple[float, float]:
        return (1000 * (self.t1[0] - self.t0[0]) / steps, 1000 * (self.t1[1] - self.t0[1]) / steps)


def cnf_fit(name: str, steps: int, root: str, tag: str,
            profiler: cProfile.Profile | None = None) -> dict:
    """``cnf fit`` in-process; returns wall and CPU ms/step over the training window."""
    window = _Window(profiler)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli = cnf_run(["fit", *_args(name, steps, root, tag)],
                      trainer_defaults={"callbacks": [window.callback]})
    summary = json.loads((cli.run_dir / "summary.json").read_text())
    wall, cpu = window.ms(summary["steps"])
    return {"ms": wall, "cpu": cpu, "steps": summary["steps"],
            "val_nll": summary["metrics"].get("val/nll")}


_BUILDS = iter(range(1_000_000))


def _build(name: str, steps: int, root: str):
    """The config's model and data module, seeded as ``cnf fit`` seeds them, and the global
    random state at the start of that fit (what the loaders of ``cnf fit`` draw from)."""
    import lightning as L

    class RandomState(L.Callback):
        def on_fit_start(cb, trainer, pl_module):
            cb.state = torch.get_rng_state()

    at_start = RandomState()
    run_name = f"plain-{next(_BUILDS)}"  # a run directory is written once
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        # a fit of zero steps: the model and data module exactly as `cnf fit` seeds and
        # builds them (the CLI's own preparation needs the fit subcommand)
        cli = cnf_run(["fit", *_args(name, steps, root, run_name), "--trainer.max_steps=0",
                       "--trainer.num_sanity_val_steps=0"],
                      trainer_defaults={"callbacks": [at_start]})
        cli.datamodule.setup("fit")
    return cli.model, cli.datamodule, cli.trainer.val_check_interval, at_start.state


def _validate(density: torch.nn.Module, loader, n: int) -> float:
    density.eval()
    with torch.no_grad(), exact_logdet(density):
        parts = [-density.log_prob(v).sum() for (v,) in loader]
    density.train()
    return float(sum(parts) / n)


def plain_fit(name: str, steps: int, root: str, profiler: cProfile.Profile | None = None) -> dict:
    """A plain loop over the data module's own loaders (so the same batches as ``cnf fit``:
    the global random state is set to the one that fit starts from, and the loaders draw
    from it in the same order), Adam, validation on the same schedule."""
    model, dm, val_every, state = _build(name, steps, root)
    density = model.density
    dm.setup("fit")
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    resample = getattr(dm, "resample_every_epoch", False)
    val_every = int(val_every)
    torch.set_rng_state(state)
    train_loader = TensorDataModule.train_dataloader(dm)
    val_loader = dm.val_dataloader()
    if profiler is not None:
        profiler.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    step, epoch, val_nll = 0, 0, None
    while step < steps:
        if resample and epoch > 0:  # a fresh training set each epoch (as the toy module)
            dm.train_set = dm.make_split("train", epoch)
            train_loader = TensorDataModule.train_dataloader(dm)
        for (x,) in train_loader:
            loss = -density.log_prob(x).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step % val_every == 0:
                val_nll = _validate(density, val_loader, len(dm.val_set))
            if step >= steps:
                break
        epoch += 1
    t1, c1 = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.disable()
    return {"ms": 1000 * (t1 - t0) / steps,
            "cpu": 1000 * (c1 - c0) / steps, "steps": steps, "val_nll": val_nll}


# -- profile ----------------------------------------------------------------------------
# bucket -> (path fragment, function name) pairs whose cumulative time goes to it
BUCKETS: dict[str, list[tuple[str, str]]] = {
    "data loading+collation": [("torch/utils/data/dataloader.py", "__next__")],
    "self.log": [("lightning/pytorch/core/module.py", "log")],
    "finite checks": [("cnf/lightning/base.py", "on_before_optimizer_step"),
                      ("~", "<built-in method torch.isfinite>")],
    "stats gathering": [("cnf/lightning/density.py", "_log_stats"),
                        ("cnf/flows/base.py", "gather")],
    "callback hooks (all)": [("lightning/pytorch/trainer/call.py", "_call_callback_hooks")],
    "  progress": [("cnf/lightning/progress.py", "on_train_batch_end"),
                   ("cnf/lightning/progress.py", "on_validation_end")],
    "  checkpointing": [("lightning/pytorch/callbacks/model_checkpoint.py", "on_train_batch_end"),
                        ("lightning/pytorch/callbacks/model_checkpoint.py", "on_validation_end"),
                        ("lightning/pytorch/callbacks/model_checkpoint.py", "on_train_epoch_end")],
    "loggers (metrics to CSV)": [("lightning/pytorch/trainer/connectors/logger_connector/"
                                  "logger_connector.py", "log_metrics")],
    "validation (whole loop)": [("lightning/pytorch/loops/evaluation_loop.py", "run"),
                                ("bench_overhead.py", "_validate")],
    "model forward (train+val)": [("cnf/distributions.py", "log_prob")],
    "backward": [("torch/_tensor.py", "backward")],
    "optimizer update (Adam)": [("torch/optim/adam.py", "adam")],
}


def _bucket_seconds(stats: pstats.Stats) -> dict[str, float]:
    out = dict.fromkeys(BUCKETS, 0.0)
    for (path, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for bucket, keys in BUCKETS.items():
            if any(func == f and frag in path for frag, f in keys):
                out[bucket] += ct
    return out


def _own_by_package(stats: pstats.Stats) -> dict[str, float]:
    out: dict[str, float] = {}
    for (path, _line, _func), (_cc, _nc, tt, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        if path == "~":
            key = "<built-in/C>"
        else:
            key = next((k for k in ("lightning/", "torch/", "cnf/") if f"/{k}" in path), "other")
        out[key] = out.get(key, 0.0) + tt
    return out


def profile(name: str, steps: int, root: str) -> None:
    """One cProfile pass per side, over the training window only, in CPU time."""
    res, res_pkg = {}, {}
    for side in ("plain", "cnf"):
        prof = cProfile.Profile(time.process_time)
        r = (plain_fit(name, steps, root, prof) if side == "plain"
             else cnf_fit(name, steps, root, "profile", prof))
        stats = pstats.Stats(prof)
        res[side] = (_bucket_seconds(stats), r["steps"], r["cpu"])
        res_pkg[side] = _own_by_package(stats)
    (pb, ps, pms), (cb, cs, cms) = res["plain"], res["cnf"]
    print(f"\nprofile {name} (cProfile on, training window only; CPU ms/step under the "
          f"profiler: plain {pms:.1f}, cnf {cms:.1f}; cumulative CPU ms per step, buckets "
          f"overlap)")
    print(f"  {'bucket':28s} {'plain':>8s} {'cnf':>8s} {'diff':>8s}")
    for b in BUCKETS:
        p, c = 1000 * pb[b] / ps, 1000 * cb[b] / cs
        if p or c:
            print(f"  {b:28s} {p:8.2f} {c:8.2f} {c - p:+8.2f}")
    print("  own CPU ms per step by package:  plain | cnf")
    for pkg in ("lightning/", "torch/", "cnf/", "<built-in/C>", "other"):
        print(f"    {pkg:28s} {1000 * res_pkg['plain'].get(pkg, 0) / ps:8.2f} "
              f"{1000 * res_pkg['cnf'].get(pkg, 0) / cs:8.2f}")


def _l(values: list[float]) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS))
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default per row)")
    ap.add_argument("--repeats", type=int, default=2, help="plain/cnf pairs per workload")
    ap.add_argument("--profile", action="store_true", help="also a cProfile pass per workload")
    ap.add_argument("--profile-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print(f"# bench_overhead  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"load {open('/proc/loadavg').read().split()[:3]}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for name in args.only:
            steps = args.steps or WORKLOADS[name][2]
            if not args.profile_only:
                plain, cnf, load = [], [], []
                for r in range(args.repeats):
                    # cnf first on even pairs (its step count, if early stopping ends it,
                    # sets the plain loop's), plain first on odd ones
                    order = ("cnf", "plain") if r % 2 == 0 else ("plain", "cnf")
                    for side in order:
                        if side == "cnf":
                            c = cnf_fit(name, steps, root, f"{name}-{r}")
                            steps = c["steps"]
                            cnf.append(c)
                        else:
                            plain.append(plain_fit(name, steps, root))
                    load.append(os.getloadavg()[0])
                pm, cm = [p["cpu"] for p in plain], [c["cpu"] for c in cnf]
                pw, cw = [p["ms"] for p in plain], [c["ms"] for c in cnf]
                ratio = statistics.median(cm) / statistics.median(pm)
                wratio = statistics.median(cw) / statistics.median(pw)
                rows.append((name, steps, pm, cm, ratio, wratio, load))
                print(f"{name:11s} steps {steps:5d} | CPU ms/step plain {_l(pm)} cnf {_l(cm)} "
                      f"ratio {ratio:.2f} | wall ms/step plain {_l(pw)} cnf {_l(cw)} ratio "
                      f"{wratio:.2f} | val/nll plain {_f(plain[-1]['val_nll'])} "
                      f"cnf {_f(cnf[-1]['val_nll'])} | load {_l(load)}", flush=True)
            if args.profile or args.profile_only:
                profile(name, steps, root)
    if rows:
        print("\n| workload | steps | plain CPU ms/step | cnf CPU ms/step | ratio (CPU) | "
              "ratio (wall) | load 1m |")
        print("|---|---|---|---|---|---|---|")
        for name, steps, pm, cm, ratio, wratio, load in rows:
            print(f"| {name} | {steps} | {_l(pm)} | {_l(cm)} | {ratio:.2f} | {wratio:.2f} | "
                  f"{min(load):.1f}–{max(load):.1f} |")
    print(f"# load at the end {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    sys.exit(main())
