"""MAF and NSF against zuko 1.6: train step, log_prob, sampling and test NLL, one thread.

Same architecture and parameter count on both sides: 5 autoregressive transforms, each a
MADE 2×64 (ReLU), feature order reversed between transforms, N(0, I) base; MAF = affine,
NSF = rational-quadratic spline with 8 bins on [-5, 5] and identity tails. Runs are
interleaved (ours and zuko's alternate, step by step) so background load hits both alike.

Usage:
    python experiments/bench/bench_discrete.py            # full run (36 min at load 14 on 2 cores)
    python experiments/bench/bench_discrete.py --quick    # smoke run (~1 min)

Needs zuko 1.6.0, the `bench` extra (never a runtime dependency):
    pip install -e ".[bench]"        or        pip install zuko==1.6.0 --no-deps
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

try:
    import zuko  # noqa: E402
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("bench_discrete needs zuko 1.6.0 (benchmark extra only): run\n"
             "    pip install -e '.[bench]'      or      pip install zuko==1.6.0 --no-deps")

from cnf.data.toy import sample as toy_sample  # noqa: E402
from cnf.distributions import Density, StandardNormal  # noqa: E402
from cnf.flows.autoregressive import MAF  # noqa: E402
from cnf.flows.spline import NSF  # noqa: E402

TRANSFORMS, HIDDEN, BINS, BOUND, BATCH = 5, (64, 64), 8, 5.0, 512


class Model:
    """Uniform handle on both libraries: log_prob, sample, parameters."""

    def __init__(self, lib: str, kind: str, dim: int):
        self.lib, self.kind, self.dim = lib, kind, dim
        if lib == "ours":
            flow = (MAF(dim, TRANSFORMS, HIDDEN) if kind == "MAF"
                    else NSF(dim, TRANSFORMS, BINS, BOUND, HIDDEN))
            self.module = Density(flow, StandardNormal(dim))
            self.log_prob = self.module.log_prob
            self.sample = self.module.sample
        else:
            if kind == "MAF":
                self.module = zuko.flows.MAF(dim, transforms=TRANSFORMS, hidden_features=HIDDEN)
            else:
                self.module = zuko.flows.NSF(dim, transforms=TRANSFORMS, bins=BINS,
                                             hidden_features=HIDDEN)
            self.log_prob = lambda x: self.module().log_prob(x)
            self.sample = lambda n: self.module().sample((n,))
        self.opt = torch.optim.Adam(self.module.parameters(), lr=1e-3)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def step(self, x: torch.Tensor) -> float:
        loss = -self.log_prob(x).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def speed_rows(kind: str, dim: int, steps: int, reps: int, n_eval: int, n_sample: int) -> list[list]:
    torch.manual_seed(0)
    models = {lib: Model(lib, kind, dim) for lib in ("ours", "zuko")}
    assert models["ours"].n_params == models["zuko"].n_params, "architectures differ"
    order = [("ours", "zuko"), ("zuko", "ours")]
    # training step: fresh N(0, I) batch per step, shared by both, alternating who goes first
    times: dict[str, list[float]] = {"ours": [], "zuko": []}
    for i in range(steps + 10):
        x = torch.randn(BATCH, dim)
        for lib in order[i % 2]:
            t = _timed(lambda lib=lib, x=x: models[lib].step(x))
            if i >= 10:
                times[lib].append(t)
    step_ms = {lib: statistics.median(v) * 1e3 for lib, v in times.items()}
    # log_prob on n_eval points and sampling n_sample points, no grad: min over reps
    x = torch.randn(n_eval, dim)
    lp = {"ours": [], "zuko": []}
    smp = {"ours": [], "zuko": []}
    with torch.no_grad():
        for i in range(reps):
            for lib in order[i % 2]:
                lp[lib].append(_timed(lambda lib=lib: models[lib].log_prob(x)))
            for lib in order[i % 2]:
                smp[lib].append(_timed(lambda lib=lib: models[lib].sample(n_sample)))
    lp_s = {lib: min(v) for lib, v in lp.items()}
    rate = {lib: n_sample / min(v) for lib, v in smp.items()}
    n = models["ours"].n_params
    return [
        [kind, dim, n, f"train step ms (batch {BATCH}, median of {steps})",
         step_ms["ours"], step_ms["zuko"], step_ms["ours"] / step_ms["zuko"]],
        [kind, dim, n, f"log_prob s ({n_eval // 1000}k points, min of {reps})",
         lp_s["ours"], lp_s["zuko"], lp_s["ours"] / lp_s["zuko"]],
        [kind, dim, n, f"sampling k samples/s ({n_sample // 1000}k, best of {reps})",
         rate["ours"] / 1e3, rate["zuko"] / 1e3, rate["zuko"] / rate["ours"]],
    ]


def copy_init(ours: Model, theirs: Model) -> None:
    """Start ours from zuko's initial weights, after checking that every MADE mask agrees
    (so the architectures are identical, not just the parameter counts). The NLL rows then
    differ only by the implementations, not by the luck of the initial draw."""
    for layer, zt in zip(ours.module.flow.flows, theirs.module.transform.transforms):
        made = layer.made
        zlin = [m for m in zt.hyper if hasattr(m, "mask")]
        p, d = made.params_per_feature, made.dim
        # zuko's output rows are feature-major (i·P + k), ours parameter-major (k·D + i)
        perm = torch.tensor([i * p + k for k in range(p) for i in range(d)])
        for i, (w, b, zl) in enumerate(zip(made.weights, made.biases, zlin)):
            zw, zb, zm = zl.weight, zl.bias, zl.mask
            if i == made.num_layers - 1:
                zw, zb, zm = zw[perm], zb[perm], zm[perm]
            if not torch.equal(getattr(made, f"mask{i}").bool(), zm.bool()):
                raise RuntimeError(f"MADE masks differ from zuko's in layer {i}")
            with torch.no_grad():
                w.copy_(zw * zm)
                b.copy_(zb)


def nll_runs(dataset: str, kind: str, seed: int, steps: int, n_test: int) -> dict[str, float]:
    train = toy_sample(dataset, 100_000, seed=seed)
    test = toy_sample(dataset, n_test, seed=10_000 + seed)
    models = {}
    for lib in ("ours", "zuko"):
        torch.manual_seed(seed)
        models[lib] = Model(lib, kind, 2)
    copy_init(models["ours"], models["zuko"])
    g = torch.Generator().manual_seed(seed)
    nonfinite = {lib: 0 for lib in models}
    for _ in range(steps):
        x = train[torch.randint(0, train.shape[0], (BATCH,), generator=g)]
        for lib, m in models.items():
            if not math.isfinite(m.step(x)):
                nonfinite[lib] += 1
    out = {}
    with torch.no_grad():
        for lib, m in models.items():
            out[lib] = float(-m.log_prob(test).mean())
            out[lib + "_nonfinite"] = nonfinite[lib]
    return out


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few steps and one seed (smoke run)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=2000, help="training steps for the NLL rows")
    p.add_argument("--timing-steps", type=int, default=200)
    p.add_argument("--skip-nll", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.timing_steps = 1, 100, 20
    torch.set_num_threads(1)
    started = time.time()
    print(f"# bench_discrete — {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}")
    print(f"torch {torch.__version__}, zuko {zuko.__version__}, threads {torch.get_num_threads()}, "
          f"python {platform.python_version()}, {platform.machine()}; load at start {load()}\n")

    if not args.skip_speed:
        print("## Speed (ratio = ours / zuko; for sampling, zuko's rate / ours: < 1 means ours is "
              "faster)\n")
        print("| model | D | params | metric | ours | zuko | ratio |")
        print("|---|---|---|---|---|---|---|")
        reps = 2 if args.quick else 5
        for kind in ("MAF", "NSF"):
            for dim in (2, 16):
                n_eval = 10_000 if args.quick else 100_000
                n_sample = ((2_000 if args.quick else 100_000) if dim == 2
                            else (1_000 if args.quick else 10_000))
                for row in speed_rows(kind, dim, args.timing_steps, reps, n_eval, n_sample):
                    print("| " + " | ".join(fmt(v) for v in row) + " |", flush=True)
        print(f"\nload after the speed rows: {load()}\n")

    if not args.skip_nll:
        print(f"## Test NLL (nats, 20k test points) after {args.steps} steps, batch {BATCH}, "
              f"Adam 1e-3, seeds 0..{args.seeds - 1}: mean ± sd. Both start from the same "
              f"weights (zuko's draw, masks checked equal) and see the same batches\n")
        print("| data | model | ours | zuko | ours − zuko | non-finite losses (ours/zuko) |")
        print("|---|---|---|---|---|---|")
        for dataset in ("moons", "8gaussians"):
            for kind in ("MAF", "NSF"):
                runs = [nll_runs(dataset, kind, s, args.steps, 20_000) for s in range(args.seeds)]
                ours = [r["ours"] for r in runs]
                zk = [r["zuko"] for r in runs]

                def ms(v: list[float]) -> str:
                    sd = statistics.stdev(v) if len(v) > 1 else 0.0
                    return f"{statistics.mean(v):.3f} ± {sd:.3f}"

                diff = statistics.mean(ours) - statistics.mean(zk)
                nf = f"{sum(r['ours_nonfinite'] for r in runs)}/{sum(r['zuko_nonfinite'] for r in runs)}"
                print(f"| {dataset} | {kind} | {ms(ours)} | {ms(zk)} | {diff:+.3f} | {nf} |", flush=True)
        print(f"\nper-seed NLLs are in the rows above as mean ± sd; load at end {load()}")
    print(f"\ntotal wall time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
