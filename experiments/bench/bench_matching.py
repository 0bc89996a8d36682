"""Flow matching in cnf against TorchCFM, and against maximum likelihood, on toy 2D data.

Every model is evaluated the same way: cnf's exact-trace likelihood (``Density(CNF)``,
dopri5 at rtol = atol = 1e-5) on a fixed held-out set. Methods (batch 256, Adam lr 1e-3,
one CPU thread; FFJORD's 3×64 concatsquash tanh field with T = 0.5 unless said):

- ``cnf_icfm``: cnf's I-CFM (``FlowMatcher(linear, independent, sigma=0.1)``);
- ``tcfm_icfm``: TorchCFM's ``ConditionalFlowMatcher(sigma=0.1)`` drawing the pairs and
  targets for the *same* field (time flipped to cnf's convention) — the matcher alone differs;
- ``cnf_otcfm`` / ``tcfm_otcfm``: minibatch OT-CFM: scipy's exact assignment in cnf, POT's
  exact EMD plan sampled by TorchCFM's ``ExactOptimalTransportConditionalFlowMatcher``;
- ``tcfm_icfm_mlp``: TorchCFM end to end, its own ``MLP(2, w=64, time_varying=True)`` (3×64,
  SELU), evaluated through cnf by wrapping the field as ``f(t, z) = -v(1 - t, z)``, T = 1;
- ``mle_rk4``: cnf's best maximum-likelihood setting on toy data (``toy_ffjord_rnode``: RK4
  4 steps, direct backprop, kinetic + Jacobian 0.01, batch 100);
- ``ffjord``: plain FFJORD (dopri5 1e-5, adjoint, exact trace, batch 100).

The methods run interleaved in one process (round robin between evaluation points), so load
changes hit all of them alike. Training time excludes evaluations; it is given as wall time
and as CPU time of the process (one thread; on a loaded machine CPU time stays near what an
idle machine's wall time would be).

    python experiments/bench/bench_matching.py                    # both datasets, 1 seed
    python experiments/bench/bench_matching.py --datasets 8gaussians --seeds 0 1 2 \\
        --fm-steps 1000 3000 --mle-iters 1000 --ffjord-iters 300 --nfe-curve

TorchCFM: ``pip install --no-deps torchcfm==1.0.7 POT==0.9.7.post1`` (extra ``bench-fm``);
without it the ``tcfm_*`` rows are skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from cnf.data.toy import sample  # noqa: E402
from cnf.distributions import Density, StandardNormal  # noqa: E402
from cnf.flows.base import exact_logdet  # noqa: E402
from cnf.flows.continuous import CNF  # noqa: E402
from cnf.ode import SolverConfig  # noqa: E402
from cnf.ode.matching import FlowMatcher  # noqa: E402

# the official FFJORD toy script's held-out NLL after 1000 iterations (bench_ffjord.py)
OFFICIAL_1000 = {"8gaussians": 3.15, "checkerboard": 3.91}
EVAL = SolverConfig(method="dopri5", rtol=1e-5, atol=1e-5, adjoint=False)


def _field(**kw) -> CNF:
    return CNF(2, hidden=(64, 64, 64), layer_type="concatsquash", act="tanh", T=0.5,
               eval_solver=EVAL, **kw)


class _TorchCFMField(nn.Module):
    """TorchCFM's field v(t, x) (noise at t = 0, data at 1) as cnf's f(t, z) = -v(1 - t, z)."""

    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.mlp = mlp

    def forward(self, t, z):
        tt = (1 - t).to(z.dtype).expand(z.shape[0], 1) if t.dim() == 0 else (1 - t).reshape(-1, 1)
        return -self.mlp(torch.cat([z, tt], dim=1))


class Runner:
    """One method: trains to its next evaluation point, then evaluates."""

    def __init__(self, name: str, dataset: str, seed: int, evals: list[int], batch: int):
        self.name, self.dataset, self.seed, self.batch = name, dataset, seed, batch
        self.evals = sorted(evals)
        self.step = 0
        self.wall = self.cpu = 0.0
        self.records: list[dict] = []

    @property
    def done(self) -> bool:
        return not self.evals

    def data(self) -> torch.Tensor:
        return sample(self.dataset, self.batch, seed=self.seed * 10**7 + self.step)

    def advance(self, x_test: torch.Tensor) -> None:
        target = self.evals.pop(0)
        while self.step < target:
            self.step += 1
            x = self.data()
            t0, c0 = time.perf_counter(), time.process_time()
            self.train_step(x)
            self.wall += time.perf_counter() - t0
            self.cpu += time.process_time() - c0
        nll, nfe = self.evaluate(x_test)
        self.records.append({"step": self.step, "nll": nll, "nfe": nfe, "wall": self.wall,
                             "cpu": self.cpu})

    def evaluate(self, x_test: torch.Tensor) -> tuple[float, float]:
        density = Density(self.cnf, StandardNormal(2))
        self.cnf.eval()
        with torch.no_grad(), exact_logdet(density):
            nll = -density.log_prob(x_test).mean().item()
        nfe = self.cnf.stats().get("nfe", float("nan"))
        self.cnf.train()
        return nll, nfe


class FMRunner(Runner):
    def __init__(self, name, dataset, seed, evals, batch=256, coupling="independent",
                 backend="cnf", own_mlp=False):
        super().__init__(name, dataset, seed, evals, batch)
        torch.manual_seed(seed)
        if own_mlp:
            from torchcfm.models.models import MLP

            self.cnf = CNF(2, T=1.0, net=_TorchCFMField(MLP(2, w=64, time_varying=True)),
                           eval_solver=EVAL)
        else:
            self.cnf = _field()
        self.own_mlp = own_mlp
        self.opt = torch.optim.Adam(self.cnf.parameters(), lr=1e-3)
        self.backend = backend
        if backend == "cnf":
            self.matcher = FlowMatcher("linear", coupling, sigma=0.1)
        else:
            from torchcfm.conditional_flow_matching import (
                ConditionalFlowMatcher,
                ExactOptimalTransportConditionalFlowMatcher,
            )

            cls = (ExactOptimalTransportConditionalFlowMatcher if coupling == "ot"
                   else ConditionalFlowMatcher)
            self.tcfm = cls(sigma=0.1)

    def train_step(self, x: torch.Tensor) -> None:
        self.opt.zero_grad()
        if self.backend == "cnf":
            loss = self.matcher.loss(self.cnf.velocity, x)
        else:
            x0 = torch.randn_like(x)  # TorchCFM: noise at t = 0, data at t = 1
            t, xt, ut = self.tcfm.sample_location_and_conditional_flow(x0, x)
            if self.own_mlp:  # its own field, its own convention
                v = self.cnf.net.mlp(torch.cat([xt, t[:, None]], dim=1))
                loss = (v - ut).pow(2).mean()
            else:  # the same field as cnf_*: s = 1 - t, u = -u_t
                loss = (self.cnf.velocity(1 - t, xt) + ut).pow(2).mean()
        loss.backward()
        self.opt.step()


class MLERunner(Runner):
    def __init__(self, name, dataset, seed, evals, batch=100, rk4=True, init: CNF | None = None):
        super().__init__(name, dataset, seed, evals, batch)
        torch.manual_seed(seed)
        if rk4:
            self.cnf = _field(solver=SolverConfig(method="rk4", step_size=0.125, adjoint=False),
                              kinetic_weight=0.01, jacobian_weight=0.01)
        else:
            self.cnf = _field(solver=SolverConfig(method="dopri5", rtol=1e-5, atol=1e-5))
        if init is not None:
            self.cnf.load_state_dict(init.state_dict())
        self.density = Density(self.cnf, StandardNormal(2))
        self.opt = torch.optim.Adam(self.cnf.parameters(), lr=1e-3, weight_decay=1e-5)

    def train_step(self, x: torch.Tensor) -> None:
        self.opt.zero_grad()
        loss = -self.density.log_prob(x).mean()
        extra = self.cnf.extra_losses()
        if extra:
            loss = loss + sum(extra.values())
        loss.backward()
        self.opt.step()


def _first_at(records: list[dict], target: float) -> dict | None:
    return next((r for r in records if r["nll"] <= target), None)


def run(args) -> dict:
    torch.set_num_threads(1)
    try:
        import torchcfm  # noqa: F401

        have_tcfm = True
    except ImportError:
        have_tcfm = False
        print("torchcfm not installed: tcfm_* rows skipped")
    results: dict = {"load_before": open("/proc/loadavg").read().split()[:3], "runs": []}
    for dataset in args.datasets:
        for seed in args.seeds:
            x_test = sample(dataset, args.n_test, seed=10**6 + seed)
            fm_evals = sorted(set(args.fm_steps + [s for s in (250, 500) if s < max(args.fm_steps)]))
            runners: list[Runner] = [FMRunner("cnf_icfm", dataset, seed, fm_evals),
                                     FMRunner("cnf_otcfm", dataset, seed, fm_evals, coupling="ot")]
            if have_tcfm:
                runners += [FMRunner("tcfm_icfm", dataset, seed, fm_evals, backend="tcfm"),
                            FMRunner("tcfm_otcfm", dataset, seed, fm_evals, coupling="ot",
                                     backend="tcfm"),
                            FMRunner("tcfm_icfm_mlp", dataset, seed, fm_evals, backend="tcfm",
                                     own_mlp=True)]
            if args.mle_iters:
                runners.append(MLERunner("mle_rk4", dataset, seed,
                                         list(range(args.mle_every, args.mle_iters + 1, args.mle_every))))
            if args.ffjord_iters:
                runners.append(MLERunner("ffjord", dataset, seed,
                                         list(range(args.mle_every, args.ffjord_iters + 1, args.mle_every)),
                                         rk4=False))
            while not all(r.done for r in runners):
                for r in runners:
                    if not r.done:
                        r.advance(x_test)
                        rec = r.records[-1]
                        print(f"{dataset} s{seed} {r.name:14s} step {rec['step']:5d} nll {rec['nll']:.3f} "
                              f"nfe {rec['nfe']:.0f} train wall {rec['wall']:.1f}s cpu {rec['cpu']:.1f}s",
                              flush=True)
            extra = {}
            if args.then_mle:
                base = next(r for r in runners if r.name == "cnf_icfm")
                tune = MLERunner("fm_then_mle", dataset, seed,
                                 list(range(args.mle_every, args.then_mle + 1, args.mle_every)),
                                 init=base.cnf)
                while not tune.done:
                    tune.advance(x_test)
                runners.append(tune)
                extra["fm_then_mle_starts_at"] = base.records[-1]
            if args.nfe_curve:
                from cnf.nfe_curve import nfe_curve

                extra["nfe_curve"] = {}
                for r in runners:
                    if r.name in ("cnf_icfm", "cnf_otcfm", "fm_then_mle", "mle_rk4", "ffjord"):
                        pts = nfe_curve(Density(r.cnf, StandardNormal(2)), x_test[:2000],
                                        rk4_steps=(2, 4, 8, 16), dopri_tols=(1e-3, 1e-5),
                                        n_samples=1000, seed=seed)
                        extra["nfe_curve"][r.name] = [vars(p) for p in pts]
            for r in runners:
                results["runs"].append({"dataset": dataset, "seed": seed, "method": r.name,
                                        "steps": r.step, "ms_step_wall": 1e3 * r.wall / max(r.step, 1),
                                        "ms_step_cpu": 1e3 * r.cpu / max(r.step, 1),
                                        "records": r.records})
            results.setdefault("extra", {})[f"{dataset}/{seed}"] = extra
    results["load_after"] = open("/proc/loadavg").read().split()[:3]
    return results


def tables(results: dict) -> str:
    out = [f"load average before {results['load_before']}, after {results['load_after']}", ""]
    out.append("| dataset | seed | method | steps | ms/step wall | ms/step CPU | NLL by step (train CPU s) "
               "| first NLL ≤ official FFJORD@1000 (train CPU s) |")
    out.append("|---|---|---|---:|---:|---:|---|---|")
    for r in results["runs"]:
        target = OFFICIAL_1000[r["dataset"]]
        curve = ", ".join(f"{x['step']}: {x['nll']:.3f} ({x['cpu']:.0f}s)" for x in r["records"])
        hit = _first_at(r["records"], target)
        hit_s = f"step {hit['step']}, {hit['cpu']:.1f}s CPU / {hit['wall']:.1f}s wall" if hit else "not reached"
        out.append(f"| {r['dataset']} | {r['seed']} | {r['method']} | {r['steps']} | "
                   f"{r['ms_step_wall']:.2f} | {r['ms_step_cpu']:.2f} | {curve} | {hit_s} |")
    for key, extra in results.get("extra", {}).items():
        for name, pts in extra.get("nfe_curve", {}).items():
            row = ", ".join(f"{p['solver']} {p['setting']}: NFE {p['nfe']:.0f} NLL {p['nll']:.3f} "
                            f"ED {p['energy']:.4f}" for p in pts)
            out.append(f"\nNFE curve {key} {name}: {row}")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["8gaussians", "checkerboard"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--fm-steps", nargs="+", type=int, default=[1000, 3000])
    ap.add_argument("--mle-iters", type=int, default=300)
    ap.add_argument("--ffjord-iters", type=int, default=0)
    ap.add_argument("--mle-every", type=int, default=100)
    ap.add_argument("--then-mle", type=int, default=0, help="FM→MLE fine-tuning iterations")
    ap.add_argument("--n-test", type=int, default=2000)
    ap.add_argument("--nfe-curve", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    results = run(args)
    text = tables(results)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    assert all(math.isfinite(x["nll"]) for r in results["runs"] for x in r["records"])


if __name__ == "__main__":
    main()
