"""FFJORD on toy 2D data: s/iter, NFE, held-out NLL at 300/1000 iterations, peak memory.

Mirrors the official ``train_toy.py`` loop (batch 100 of fresh samples per iteration, Adam
lr 1e-3, weight decay 1e-5, 3×64 concatsquash tanh, T = 0.5, dopri5 at rtol = atol = 1e-5,
exact trace) so that its numbers compare with the official script measured on this machine
kind (8gaussians ≈0.11 s/iter, NLL ≈3.16–3.21 @300 and 3.15 @1000; checkerboard ≈0.08
s/iter, NLL 4.22–4.26 @300 and 3.91 @1000; shared/research/cnf-anchors.md §3).

Variants (all evaluated the same way: exact trace, dopri5 at 1e-5, on a fixed held-out set):

- ``ffjord``: the official configuration (adjoint backprop, as FFJORD always does), with
  cnf's default trace implementation (forward-mode Jacobian products, ``divergence_impl=jvp``);
- ``ffjord_autograd``: the same, with FFJORD's trace implementation (one autograd pass per
  dimension);
- ``direct``: the official model, backprop through the solver instead of the adjoint;
- ``rk4``: fixed-step RK4 training (step 0.125, 4 steps), direct backprop;
- ``rnode_rk4``: ``rk4`` plus RNODE's kinetic-energy and Jacobian-Frobenius terms (0.01 each);
- ``rnode``: dopri5 + RNODE terms (0.01 each), direct backprop.

Each (dataset, variant) runs in its own process, so peak RSS is per run; "imports" is the
baseline after imports. Training time excludes evaluations. Times are given as wall time
and as the process's CPU time (``time.process_time``, one thread): on a shared machine the
CPU time stays close to what an idle machine's wall time would be, while wall time grows
with the load. "reaches official NLL@1000" is the first evaluation (every
``--eval-every`` iterations) at which the held-out NLL is at or below the official
1000-iteration NLL, with the training time spent until then.

    python experiments/bench/bench_ffjord.py                       # default table (~15 min at load 1-2)
    python experiments/bench/bench_ffjord.py --datasets 8gaussians --variants ffjord rk4 --iters 300
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

_DIRECT = dict(method="dopri5", rtol=1e-5, atol=1e-5, adjoint=False)
_RK4 = dict(method="rk4", step_size=0.125, adjoint=False)
VARIANTS = {
    "ffjord": dict(),
    "ffjord_autograd": dict(divergence_impl="autograd"),
    "direct": dict(solver=_DIRECT),
    "rk4": dict(solver=_RK4),
    "rnode_rk4": dict(solver=_RK4, kinetic_weight=0.01, jacobian_weight=0.01),
    "rnode": dict(solver=_DIRECT, kinetic_weight=0.01, jacobian_weight=0.01),
}
# the official toy script on this machine kind (1 thread): NLL after 1000 iterations
OFFICIAL_1000 = {"8gaussians": 3.15, "checkerboard": 3.91}
OFFICIAL_300 = {"8gaussians": "3.16–3.21", "checkerboard": "4.22–4.26"}
OFFICIAL_S_ITER = {"8gaussians": "≈0.11", "checkerboard": "≈0.08"}
OFFICIAL_NFE_300 = {"8gaussians": "62/38", "checkerboard": "26/26"}
# sum of the official per-window median s/iter × 250 over iterations 1-1000 (§3.4)
OFFICIAL_TIME_1000 = {"8gaussians": 135, "checkerboard": 94}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_one(dataset: str, variant: str, iters: int, eval_every: int, n_test: int, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from cnf.data.toy import sample
    from cnf.flows.base import exact_logdet
    from cnf.flows.continuous import CNF
    from cnf.ode import SolverConfig

    rss_import = _rss_mb()
    torch.manual_seed(seed)
    kw = {"solver": dict(method="dopri5", rtol=1e-5, atol=1e-5), **VARIANTS[variant]}
    model = CNF(2, hidden=(64, 64, 64), layer_type="concatsquash", act="tanh", T=0.5,
                eval_solver=SolverConfig(method="dopri5", rtol=1e-5, atol=1e-5, adjoint=False),
                **kw)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    x_test = sample(dataset, n_test, seed=10**6 + seed)
    log2pi = math.log(2 * math.pi)

    def nll(z, logdet):
        return (0.5 * z.pow(2).sum(1) + log2pi - logdet).mean()

    def evaluate() -> tuple[float, float]:
        model.eval()
        with torch.no_grad(), exact_logdet(model):
            z, ld = model(x_test)
            value = nll(z, ld).item()
        nfe = model.stats()["nfe"]
        model.train()
        return value, nfe

    train_time = train_cpu = 0.0
    step_times, step_cpu, nfe_f, nfe_b = [], [], [], []
    evals = []
    target = OFFICIAL_1000[dataset]
    t_ref = None
    for it in range(1, iters + 1):
        x = sample(dataset, 100, seed=seed * 10**7 + it)
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad()
        z, ld = model(x)
        loss = nll(z, ld)
        extra = model.extra_losses()
        if extra:
            loss = loss + sum(extra.values())
        loss.backward()
        opt.step()
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        train_time += dt
        train_cpu += dc
        s = model.stats()
        step_times.append(dt)
        step_cpu.append(dc)
        nfe_f.append(s["nfe_forward"])
        nfe_b.append(s["nfe_backward"])
        if it % eval_every == 0 or it in (300, iters):
            value, enfe = evaluate()
            evals.append({"iter": it, "nll": value, "nfe": enfe, "train_time": train_time,
                          "train_cpu": train_cpu})
            if t_ref is None and value <= target:
                t_ref = (train_time, train_cpu, it)
    by_iter = {e["iter"]: e for e in evals}

    def window(xs, a, b):
        return sum(xs[a - 1:b]) / max(1, len(xs[a - 1:b]))

    def median(xs):
        xs = sorted(xs)
        return xs[len(xs) // 2] if xs else float("nan")

    return {
        "dataset": dataset, "variant": variant, "iters": iters, "seed": seed,
        "s_iter_1_300": median(step_times[:300]),
        "s_iter_all": train_time / iters,
        "cpu_iter_1_300": median(step_cpu[:300]),
        "cpu_iter_all": train_cpu / iters,
        "train_cpu": train_cpu,
        "nfe_300": (window(nfe_f, 291, 300), window(nfe_b, 291, 300)) if iters >= 300 else None,
        "nfe_end": (window(nfe_f, iters - 9, iters), window(nfe_b, iters - 9, iters)),
        "nll_300": by_iter.get(300, {}).get("nll"),
        "nll_end": by_iter[iters]["nll"],
        "eval_nfe_end": by_iter[iters]["nfe"],
        "train_time": train_time,
        "t_ref": t_ref,
        "rss_peak_mb": _rss_mb(),
        "rss_import_mb": rss_import,
        "evals": evals,
    }


def _fmt(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["8gaussians", "checkerboard"])
    ap.add_argument("--variants", nargs="+", default=["ffjord", "direct", "rk4", "rnode_rk4"],
                    choices=list(VARIANTS))
    ap.add_argument("--iters", type=int, default=1000)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--n-test", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write all results (with NLL curves) here")
    ap.add_argument("--one", nargs=2, metavar=("DATASET", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        res = run_one(args.one[0], args.one[1], args.iters, args.eval_every, args.n_test, args.seed)
        print("RESULT " + json.dumps(res))
        return

    import torch

    results = []
    load_before = os.getloadavg()
    for ds in args.datasets:
        for var in args.variants:
            cmd = [sys.executable, __file__, "--one", ds, var, "--iters", str(args.iters),
                   "--eval-every", str(args.eval_every), "--n-test", str(args.n_test),
                   "--seed", str(args.seed)]
            load = os.getloadavg()[0]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode != 0 or not line:
                print(f"# {ds}/{var} failed:\n{out.stderr[-2000:]}", flush=True)
                continue
            res = json.loads(line[0][7:])
            res["load_1min_at_start"] = load
            results.append(res)
            print(f"# done {ds}/{var}: {res['s_iter_all']:.4f} s/iter wall, "
                  f"{res['cpu_iter_all']:.4f} CPU, NLL@{args.iters} "
                  f"{res['nll_end']:.3f}, load {load:.2f}", flush=True)
    load_after = os.getloadavg()

    print()
    print(f"torch {torch.__version__}, threads {os.environ.get('OMP_NUM_THREADS')}, "
          f"load (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}; "
          f"{args.iters} iterations, batch 100, held-out NLL on {args.n_test} points "
          f"(exact trace, dopri5 1e-5), seed {args.seed}")
    print()
    it = args.iters
    print(f"| dataset | variant | s/iter wall (median it 1-300) | CPU s/iter (median 1-300; "
          f"mean 1-{it}) | NFE f/b @300 | NFE f/b @{it} | NLL @300 | NLL @{it} | "
          f"reaches official NLL@1000 at: it, CPU s (wall s) | train CPU s (wall s) | "
          f"peak RSS MB (imports) | load at start |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for ds in args.datasets:
        print(f"| {ds} | official script (measured, §3) | {OFFICIAL_S_ITER[ds]} | – | "
              f"{OFFICIAL_NFE_300[ds]} | – | {OFFICIAL_300[ds]} | {OFFICIAL_1000[ds]} (@1000) | "
              f"1000, ≈{OFFICIAL_TIME_1000[ds]} (wall) | – | ≈440 (≈340) | 1–3 |")
        for r in (r for r in results if r["dataset"] == ds):
            n300 = "–" if r["nfe_300"] is None else "{:.0f}/{:.0f}".format(*r["nfe_300"])
            ref = ("not reached" if r["t_ref"] is None else
                   f"{r['t_ref'][2]}, {r['t_ref'][1]:.1f} ({r['t_ref'][0]:.1f})")
            print(f"| {ds} | {r['variant']} | {r['s_iter_1_300']:.4f} | "
                  f"{r['cpu_iter_1_300']:.4f}; {r['cpu_iter_all']:.4f} | "
                  f"{n300} | "
                  f"{r['nfe_end'][0]:.0f}/{r['nfe_end'][1]:.0f} | {_fmt(r['nll_300'])} | "
                  f"{r['nll_end']:.3f} | {ref} | {r['train_cpu']:.1f} ({r['train_time']:.1f}) | "
                  f"{r['rss_peak_mb']:.0f} ({r['rss_import_mb']:.0f}) | {r['load_1min_at_start']:.2f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
