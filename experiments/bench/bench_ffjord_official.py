"""The official FFJORD toy script beside cnf's matching config, run as pairs on one machine.

The official side is ``train_toy.py`` of a checkout of ``rtqichen/ffjord``, run **unchanged**
(``--viz_freq 100000``; a harness written to a temporary folder at run time stubs only the
end-of-training trajectory movie, which is not training and fails on matplotlib >= 3.9, and
afterwards evaluates the final model with the script's own ``compute_loss`` on ``--n-test``
fresh points). The official code is never copied into this tree. It needs ``six``, which
cnf's environment lacks: ``pip install --target DIR six`` and pass ``--deps DIR``.

The cnf side is ``configs/experiment/toy_ffjord.yaml``'s model (FFJORD, one block of 3×64
concatsquash tanh, T = 0.5, dopri5 at rtol = atol = 1e-5 with the adjoint, exact trace) and
optimizer (Adam, lr 1e-3, weight decay 1e-5), trained in the official script's loop: a batch
of 100 fresh samples per iteration; s/iter covers sampling, forward, backward and the step,
as the official ``Time`` does.

Each run of one dataset starts both sides at once, each a process with one thread (one core
each on a 2-core machine), so the load affects both alike; a dataset gets ``--runs`` such
pairs (the official script has no seed; cnf uses seeds 0, 1, 2...). The table gives, per
side, the median s/iter in each 250-iteration window (median over runs of the per-run
medians; also in process CPU seconds, which a loaded machine disturbs far less: the
harness notes the CPU clock at the script's own ``time.time()`` calls), the mean NFE
forward/backward, the test NLL after the last iteration (exact
trace, ``--n-test`` fresh points; the official script's own 1000-point ``[TEST]`` line is
shown too), the ratio cnf/official and the load average.

    pip install --target /tmp/ffjord_deps six
    git clone https://github.com/rtqichen/ffjord /tmp/ffjord_official
    OMP_NUM_THREADS=1 python experiments/bench/bench_ffjord_official.py \\
        --official /tmp/ffjord_official --deps /tmp/ffjord_deps        # ~15 min on an idle 2-core box
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "experiment" / "toy_ffjord.yaml"

# written to a temporary folder at run time and run from the checkout root: runs
# train_toy.py unchanged, then scores its final model with the script's own compute_loss
HARNESS = """\
import os, runpy, sys, time
sys.path.insert(0, os.getcwd())
import diagnostics.viz_toy as viz
viz.save_trajectory = lambda *a, **k: print("[harness] save_trajectory skipped")
viz.trajectory_to_video = lambda *a, **k: None
# the script times an iteration with time.time(); note the process CPU clock at each of the
# script's own calls too (the clock it reads is unchanged), for CPU seconds per iteration
script = os.path.abspath("train_toy.py")
wall, cpu_at = time.time, []
def _time():
    if sys._getframe(1).f_code.co_filename == script:
        cpu_at.append(time.process_time())
    return wall()
time.time = _time
n_test = int(sys.argv[1])
sys.argv = ["train_toy.py"] + sys.argv[2:]
g = runpy.run_path(script, run_name="__main__")
time.time = wall
import torch
model = g["model"]
model.eval()
with torch.no_grad():
    loss = g["compute_loss"](g["args"], model, batch_size=n_test)
print("HARNESS_TEST", float(loss), g["count_nfe"](model), flush=True)
# calls: one before the loop, then two per iteration (Time is taken, then `end` is reset)
print("HARNESS_CPU", " ".join(str(cpu_at[2 * k + 1] - cpu_at[2 * k]) for k in range((len(cpu_at) - 1) // 2)))
"""

_ITER = re.compile(r"Iter (\d+) \| Time ([\d.]+)\(.*?NFE Forward (\d+)\(.*?NFE Backward (\d+)\(")
_TEST = re.compile(r"\[TEST\] Iter (\d+) \| Test Loss ([-\d.]+) \| NFE (\d+)")


def _fail(message: str) -> None:
    from cnf.errors import ConfigError

    raise ConfigError(message)


def check_official(path: str | None, deps: str | None) -> tuple[Path, str]:
    """The checkout's root and the PYTHONPATH its script needs; a clear error otherwise."""
    where = ("pass --official PATH (or set FFJORD_OFFICIAL) to a checkout of rtqichen/ffjord, "
             "e.g. `git clone https://github.com/rtqichen/ffjord /tmp/ffjord_official`")
    if not path:
        _fail(f"no official FFJORD checkout given: {where}")
    root = Path(path).expanduser().resolve()
    if not (root / "train_toy.py").is_file() or not (root / "lib" / "toy_data.py").is_file():
        _fail(f"{root} is not a checkout of rtqichen/ffjord (no train_toy.py and lib/toy_data.py "
              f"there): {where}")
    pythonpath = os.pathsep.join(p for p in [deps, os.environ.get("PYTHONPATH")] if p)
    probe = subprocess.run([sys.executable, "-c", "import six"], capture_output=True,
                           env={**os.environ, "PYTHONPATH": pythonpath})
    if probe.returncode != 0:
        _fail("the official script imports `six`, which this environment lacks: run "
              "`pip install --target DIR six` and pass --deps DIR")
    return root, pythonpath


# -- the cnf side (one process per run) --------------------------------------------------
def _build(node):
    """Objects from a ``{class_path, init_args}`` tree, as the ``cnf`` command builds them."""
    if isinstance(node, dict) and "class_path" in node:
        module, _, name = node["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        return cls(**{k: _build(v) for k, v in node.get("init_args", {}).items()})
    if isinstance(node, dict):
        return {k: _build(v) for k, v in node.items()}
    return node


def cnf_model(config: Path = CONFIG):
    """The experiment config's ``Density`` and its optimizer's class and arguments."""
    import yaml

    from cnf.configs import load_file

    exp = load_file(config)
    model = exp["model"]
    if isinstance(model, str):
        model = yaml.safe_load((config.parent / model).read_text())
    args = model["init_args"]
    density = _build(args["density"])
    opt = args["optimizer"]
    module, _, name = opt["class_path"].rpartition(".")
    return density, getattr(importlib.import_module(module), name), dict(opt.get("init_args", {}))


def run_cnf(dataset: str, iters: int, seed: int, n_test: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from cnf.data.toy import sample
    from cnf.flows.base import exact_logdet

    torch.manual_seed(seed)
    density, opt_cls, opt_args = cnf_model()
    opt = opt_cls(density.parameters(), **opt_args)
    blocks = [m for m in density.modules() if hasattr(m, "stats") and hasattr(m, "train_config")]
    times, cpu, nfe_f, nfe_b = [], [], [], []
    density.train()
    for it in range(1, iters + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        x = sample(dataset, 100, seed=seed * 10**7 + it)
        opt.zero_grad()
        loss = -density.log_prob(x).mean()
        loss.backward()
        opt.step()
        loss.item()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        stats = [b.stats() for b in blocks]
        nfe_f.append(sum(s["nfe_forward"] for s in stats))
        nfe_b.append(sum(s["nfe_backward"] for s in stats))
    density.eval()
    x_test = sample(dataset, n_test, seed=10**6 + seed)
    with torch.no_grad(), exact_logdet(density):
        nll = -density.log_prob(x_test).mean().item()
    return {"times": times, "cpu": cpu, "nfe_f": nfe_f, "nfe_b": nfe_b, "nll": nll,
            "test_nfe": sum(b.stats()["nfe"] for b in blocks)}


# -- the official side ------------------------------------------------------------------
def _official_cmd(harness: Path, dataset: str, iters: int, n_test: int, save: Path) -> list[str]:
    return [sys.executable, str(harness), str(n_test), "--data", dataset, "--niters", str(iters),
            "--val_freq", str(iters), "--viz_freq", "100000", "--save", str(save)]


def _parse_official(log: str, stdout: str) -> dict:
    times, nfe_f, nfe_b = [], [], []
    for m in _ITER.finditer(log):
        times.append(float(m.group(2)))
        nfe_f.append(float(m.group(3)))
        nfe_b.append(float(m.group(4)))
    tests = [(int(m.group(1)), float(m.group(2)), int(m.group(3))) for m in _TEST.finditer(log)]
    extra = [line.split() for line in stdout.splitlines() if line.startswith("HARNESS_TEST")]
    cpu = [line.split()[1:] for line in stdout.splitlines() if line.startswith("HARNESS_CPU")]
    return {"times": times, "nfe_f": nfe_f, "nfe_b": nfe_b,
            "cpu": [float(x) for x in cpu[-1]] if cpu else [],
            "own_test": tests[-1][1] if tests else None,
            "nll": float(extra[-1][1]) if extra else None,
            "test_nfe": float(extra[-1][2]) if extra else None}


def run_pair(root: Path, pythonpath: str, dataset: str, iters: int, seed: int, n_test: int,
             work: Path, harness: Path) -> tuple[dict, dict, tuple[float, float]]:
    """One official run and one cnf run started together; returns both and the load
    average (1 min) at start and end."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    save = work / f"official_{dataset}_{seed}"
    load0 = os.getloadavg()[0]
    off = subprocess.Popen(_official_cmd(harness, dataset, iters, n_test, save), cwd=root,
                           env={**env, "PYTHONPATH": pythonpath}, stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
    ours = subprocess.Popen([sys.executable, __file__, "--one-cnf", dataset, "--iters", str(iters),
                             "--seed", str(seed), "--n-test", str(n_test)], cwd=ROOT,
                            env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out_ours, err_ours = ours.communicate()
    out_off, _ = off.communicate()
    load1 = os.getloadavg()[0]
    lines = [x for x in out_ours.splitlines() if x.startswith("RESULT ")]
    if ours.returncode != 0 or not lines:
        raise RuntimeError(f"the cnf run failed:\n{err_ours[-3000:]}")
    log_path = save / "logs"
    log = log_path.read_text() if log_path.is_file() else ""
    official = _parse_official(log, out_off)
    if off.returncode != 0 or len(official["times"]) < iters:
        raise RuntimeError(f"the official run failed (exit {off.returncode}); its log: {log_path}\n"
                           f"{log[-2000:]}")
    return official, json.loads(lines[0][7:]), (load0, load1)


# -- table --------------------------------------------------------------------------------
def _windows(iters: int, width: int = 250) -> list[tuple[int, int]]:
    return [(a, min(a + width - 1, iters)) for a in range(1, iters + 1, width)]


def _summary(runs: list[dict], iters: int) -> dict:
    win = _windows(iters)
    med = [statistics.median(statistics.median(r["times"][a - 1:b]) for r in runs) for a, b in win]
    cpu = [statistics.median(statistics.median(r["cpu"][a - 1:b]) for r in runs) for a, b in win]
    return {
        "win": med,
        "cpu_win": cpu,
        "total": statistics.median(sum(r["times"]) for r in runs),
        "total_cpu": statistics.median(sum(r["cpu"]) for r in runs),
        "nfe_f": statistics.mean(statistics.mean(r["nfe_f"]) for r in runs),
        "nfe_b": statistics.mean(statistics.mean(r["nfe_b"]) for r in runs),
        "nll": [r["nll"] for r in runs],
        "own": [r.get("own_test") for r in runs],
        "test_nfe": [r["test_nfe"] for r in runs],
    }


def _nll(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f} ({', '.join(f'{v:.3f}' for v in vals)})"


def print_table(results: dict, iters: int, n_test: int, loads: dict) -> None:
    win = _windows(iters)
    head = " / ".join(f"{a}–{b}" for a, b in win)
    print(f"\n| dataset | side | median s/iter (wall), it {head} | median CPU s/iter, same windows | "
          f"train s wall / CPU (median) | mean NFE fwd/bwd | NLL @{iters} on {n_test} fresh pts, "
          f"mean ± sd (runs) | official's own [TEST] @{iters} (1000 pts) | load 1-min (start→end "
          f"of pairs) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for ds, sides in results.items():
        so, sc = _summary(sides["official"], iters), _summary(sides["cnf"], iters)
        ld = ", ".join(f"{a:.1f}→{b:.1f}" for a, b in loads[ds])
        for name, s in (("official train_toy.py", so), ("cnf toy_ffjord", sc)):
            print(f"| {ds} | {name} | {' / '.join(f'{v:.4f}' for v in s['win'])} | "
                  f"{' / '.join(f'{v:.4f}' for v in s['cpu_win'])} | "
                  f"{s['total']:.1f} / {s['total_cpu']:.1f} | {s['nfe_f']:.1f}/{s['nfe_b']:.1f} | "
                  f"{_nll(s['nll'])} | {_nll(s['own']) if name.startswith('official') else '–'} | "
                  f"{ld} |")
        ratio = " / ".join(f"{c / o:.2f}" for c, o in zip(sc["win"], so["win"]))
        ratio_cpu = " / ".join(f"{c / o:.2f}" for c, o in zip(sc["cpu_win"], so["cpu_win"]))
        print(f"| {ds} | **ratio cnf/official** | {ratio} | {ratio_cpu} | "
              f"**{sc['total'] / so['total']:.2f} / {sc['total_cpu'] / so['total_cpu']:.2f}** | "
              f"{sc['nfe_f'] / so['nfe_f']:.2f}/{sc['nfe_b'] / so['nfe_b']:.2f} | "
              f"{statistics.mean(sc['nll']) - statistics.mean(so['nll']):+.3f} nats | – | – |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--official", default=os.environ.get("FFJORD_OFFICIAL"),
                    help="checkout of rtqichen/ffjord (default: $FFJORD_OFFICIAL)")
    ap.add_argument("--deps", default=os.environ.get("FFJORD_DEPS"),
                    help="folder holding `six` (pip install --target DIR six)")
    ap.add_argument("--datasets", nargs="+", default=["8gaussians", "checkerboard"])
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n-test", type=int, default=5000)
    ap.add_argument("--json", default=None, help="also write every run's per-iteration record here")
    ap.add_argument("--one-cnf", metavar="DATASET", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_cnf:
        print("RESULT " + json.dumps(run_cnf(args.one_cnf, args.iters, args.seed, args.n_test)))
        return
    root, pythonpath = check_official(args.official, args.deps)
    work = Path(tempfile.mkdtemp(prefix="bench_ffjord_official_"))
    harness = work / "run_toy_harness.py"
    harness.write_text(HARNESS)
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "(not a git work tree)"
    print(f"# official checkout {root} ({commit}); cnf {CONFIG.relative_to(ROOT)}; "
          f"{args.iters} iterations, {args.runs} paired runs per dataset, one thread each; "
          f"load {open('/proc/loadavg').read().split()[:3]}", flush=True)
    results: dict[str, dict[str, list]] = {ds: {"official": [], "cnf": []} for ds in args.datasets}
    loads: dict[str, list] = {ds: [] for ds in args.datasets}
    for seed in range(args.runs):  # datasets alternate, so a cut-short bench still has both
        for ds in args.datasets:
            t0 = time.time()
            off, ours, load = run_pair(root, pythonpath, ds, args.iters, seed, args.n_test, work,
                                       harness)
            results[ds]["official"].append(off)
            results[ds]["cnf"].append(ours)
            loads[ds].append(load)
            print(f"# {ds} run {seed}: official {sum(off['times']):.1f} s train, NLL "
                  f"{off['nll']:.3f}; cnf {sum(ours['times']):.1f} s, NLL {ours['nll']:.3f}; pair "
                  f"wall {time.time() - t0:.0f} s, load {load[0]:.2f}→{load[1]:.2f}", flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps({"results": results, "loads": loads}))
        if seed < args.runs - 1:
            print(f"# after {seed + 1} run(s) per dataset:")
            print_table(results, args.iters, args.n_test, loads)
    print(f"\n# {args.runs} run(s) per dataset:")
    print_table(results, args.iters, args.n_test, loads)
    print(f"\nload at the end {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    try:
        main()
    except Exception as exc:  # a cnf.errors message is the whole answer; no traceback
        from cnf.errors import CNFError

        if isinstance(exc, CNFError):
            sys.exit(f"bench_ffjord_official: {exc}")
        raise
