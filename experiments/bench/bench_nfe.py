"""Where one function evaluation of a CNF solve goes, and torchdiffeq beside torchode.

FFJORD's toy field (3×64 concatsquash, tanh, D = 2, batch 100, T = 0.5), one thread. All
figures are CPU ms per call (or per function evaluation, NFE), medians of interleaved rounds:

- ``field``: the bare field ``net(t, z)`` without autograd; ``field+jvp``: the field and
  its exact Jacobian in one forward-mode pass (``net.forward_jvp``, what the solver's
  right-hand side uses); ``field+autograd trace``: the field with autograd recording and
  D backward passes for the exact trace (FFJORD's way).
- ``train field fwd+bwd``: one evaluation with the graph kept plus its share of backward
  (forward_jvp, then backward of the outputs' sum) — the cost of one NFE in training.
- ``torchdiffeq trivial``: torchdiffeq's own per-evaluation cost (rk4 and dopri5) with a
  linear right-hand side on the same state shapes (``[B, D]``, ``[B, 1]``).
- ``odeint_cnf ...``: cnf's whole solve (eval: no grad; rk4 with 0.125 steps; dopri5 at
  1e-5) divided by its NFE, and training (rk4, direct backprop, forward + backward).
- ``torchdiffeq eval dopri5, packed RHS``: torchdiffeq on the same ``[B, D+1]`` right-hand
  side torchode gets, without cnf's bookkeeping (NFE budget, step checks, tuple state).
- ``torchode ...`` (needs ``pip install torchode==1.0.1``; in no extra, as it was not faster
  here, see the README): the same augmented right-hand side on a packed ``[B, D+1]`` state,
  dopri5 and tsit5 at the same tolerances, per-sample step control (no coupling of the batch).

With ``--against REV`` the ``odeint_cnf`` rows are also timed with ``cnf/ode/solve.py`` as
it was at git revision REV (loaded from ``git show`` as a separate module, same field, same
process, interleaved), after checking that both give the same NFE and log-dets.

``--adjoint-split``: a training iteration of FFJORD's toy config (dopri5 1e-5, adjoint, exact
trace) split per NFE: forward-solve evaluations (field + trace, the rest), backward-solve
evaluations (field + trace with the graph kept, the VJP torchdiffeq asks autograd for, and
torchdiffeq's adjoint bookkeeping + cnf's wrapper), with the fused field pass
(``ODENet.forward_jvp``, one autograd node) beside the layer-wise one it replaced.

Usage:
    python experiments/bench/bench_nfe.py              # ~2 min idle
    python experiments/bench/bench_nfe.py --adjoint-split --train-steps 150   # ~1 min
    python experiments/bench/bench_nfe.py --against HEAD~1 --only odeint_cnf
    python experiments/bench/bench_nfe.py --rounds 3 --train-steps 20
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torchdiffeq  # noqa: E402

from cnf.ode.divergence import divergence_exact  # noqa: E402
from cnf.ode.nets import ODENet  # noqa: E402
from cnf.ode.solve import NFECounter, SolverConfig, odeint_cnf  # noqa: E402

try:
    import torchode  # noqa: E402
except ImportError:  # pragma: no cover - optional
    torchode = None

B, D, T = 100, 2, 0.5


class _EndTime(torch.nn.Module):
    def forward(self) -> torch.Tensor:
        return torch.tensor(T)


def _timeit(fn: Callable[[], object], reps: int) -> float:
    """CPU ms per call (process time: on a loaded machine wall time measures the queue)."""
    t0 = time.process_time()
    for _ in range(reps):
        fn()
    return 1000 * (time.process_time() - t0) / reps


def _solve_at(rev: str):
    """``cnf/ode/solve.py`` as of git revision ``rev``, imported as its own module."""
    import importlib.util
    import subprocess
    import sys
    import tempfile

    src = subprocess.run(["git", "show", f"{rev}:cnf/ode/solve.py"], check=True,
                         capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "solve_old.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("cnf_ode_solve_old", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _old_rows(old, net, end, z, rk4, dopri) -> dict[str, Callable[[], int]]:
    """The odeint_cnf rows with the old module; checks NFE and log-dets against the current."""
    cfgs = {"rk4": old.SolverConfig(method="rk4", step_size=0.125, adjoint=False),
            "dopri": old.SolverConfig(method="dopri5", rtol=1e-5, atol=1e-5, adjoint=True)}
    for key, new_cfg in (("rk4", rk4), ("dopri", dopri)):
        c_old, c_new = old.NFECounter(), NFECounter()
        with torch.no_grad():
            _, ld_old, _ = old.odeint_cnf(net, z, end, cfgs[key], counter=c_old)
            _, ld_new, _ = odeint_cnf(net, z, end, new_cfg, counter=c_new)
        assert c_old.forward == c_new.forward, (key, c_old, c_new)
        torch.testing.assert_close(ld_old, ld_new, rtol=1e-6, atol=1e-6)
        print(f"# {key}: same NFE ({c_new.forward}) and log-dets as the old solve", flush=True)

    def ev(cfg):
        def go():
            c = old.NFECounter()
            with torch.no_grad():
                old.odeint_cnf(net, z, end, cfg, counter=c)
            return c.forward
        return go

    def train_rk4():
        c = old.NFECounter()
        zz, logdet, _ = old.odeint_cnf(net, z, end, cfgs["rk4"], counter=c)
        (zz.pow(2).sum() - logdet.sum()).backward()
        return c.forward

    def train_dopri():
        c = old.NFECounter()
        zz, logdet, _ = old.odeint_cnf(net, z, end, cfgs["dopri"], counter=c)
        (zz.pow(2).sum() - logdet.sum()).backward()
        return c.forward + c.backward

    return {"odeint_cnf eval rk4": ev(cfgs["rk4"]), "odeint_cnf eval dopri5": ev(cfgs["dopri"]),
            "odeint_cnf train rk4 fwd+bwd": train_rk4,
            "odeint_cnf train dopri5 adjoint (per fwd+bwd NFE)": train_dopri}


class _TimedNet(torch.nn.Module):
    """The field with its ``forward_jvp`` calls timed (CPU), split by grad mode: without
    grad = evaluations of the adjoint's forward solve, with grad = of its backward solve;
    ``jvp_vjp`` (the fused adjoint's evaluation: field, trace and their VJP) counts as
    backward."""

    def __init__(self, net: ODENet):
        super().__init__()
        self.net = net
        self.cpu = {False: 0.0, True: 0.0}

    @property
    def supports_jvp(self) -> bool:
        return self.net.supports_jvp

    def forward(self, t, z, *ctx):
        return self.net(t, z, *ctx)

    def forward_jvp(self, t, z, v, *ctx):
        c = time.process_time()
        out = self.net.forward_jvp(t, z, v, *ctx)
        self.cpu[torch.is_grad_enabled()] += time.process_time() - c
        return out

    @property
    def supports_vjp(self) -> bool:
        return self.net.supports_vjp

    def jvp_vjp(self, *args):  # the fused adjoint's evaluations (backward solve)
        c = time.process_time()
        out = self.net.jvp_vjp(*args)
        self.cpu[True] += time.process_time() - c
        return out


def adjoint_split(warmup: int, steps: int) -> None:
    """Where a training iteration's time goes: FFJORD's toy config (dopri5 1e-5, adjoint,
    exact trace) after ``warmup`` iterations on 8gaussians, the fused field pass beside the
    layer-wise one (same weights and data for both), CPU ms per NFE."""
    import copy
    import math

    from cnf.data.toy import sample
    from cnf.flows.continuous import CNF

    torch.manual_seed(0)
    timed = _TimedNet(ODENet(D))
    model = CNF(D, net=timed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)

    def step(i: int) -> tuple[float, float, float, float]:
        x = sample("8gaussians", B, seed=i)
        opt.zero_grad()
        c0 = time.process_time()
        z, ld = model(x)
        loss = (0.5 * z.pow(2).sum(1) + math.log(2 * math.pi) - ld).mean()
        c1 = time.process_time()
        loss.backward()
        c2 = time.process_time()
        opt.step()
        s = model.stats()
        return s["nfe_forward"], s["nfe_backward"], c1 - c0, c2 - c1

    for i in range(warmup):
        step(i)
    state, ostate = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    grad_cpu = {"t": 0.0}
    real_grad = torch.autograd.grad

    def timed_grad(*a, **k):  # torchdiffeq's adjoint: one VJP per backward evaluation
        c = time.process_time()
        out = real_grad(*a, **k)
        grad_cpu["t"] += time.process_time() - c
        return out

    rows = {}
    torch.autograd.grad = timed_grad
    try:
        for fused in (True, False, True, False):
            model.load_state_dict(state)
            opt.load_state_dict(ostate)
            timed.net.fused_jvp = fused
            timed.cpu = {False: 0.0, True: 0.0}
            grad_cpu["t"] = 0.0
            nf = nb = tf = tb = 0.0
            for i in range(steps):
                a, b, c, d = step(10**6 + i)
                nf, nb, tf, tb = nf + a, nb + b, tf + c, tb + d
            rows.setdefault(fused, []).append(
                (nf / steps, nb / steps, 1000 * tf / nf, 1000 * timed.cpu[False] / nf,
                 1000 * tb / nb, 1000 * timed.cpu[True] / nb, 1000 * grad_cpu["t"] / nb,
                 (tf + tb) / steps))
    finally:
        torch.autograd.grad = real_grad
    print("\n| field pass | NFE fwd/bwd | fwd NFE ms | of which field+trace | bwd NFE ms | "
          "of which field+trace (graph; fused: + its VJP) | autograd VJP | torchdiffeq adjoint + cnf wrapper | "
          "CPU s/iter |")
    print("|---|---|---|---|---|---|---|---|---|")
    for fused, rs in rows.items():
        m = [statistics.median(col) for col in zip(*rs)]
        print(f"| {'fused pass + adjoint' if fused else 'layer-wise + torchdiffeq adjoint (before)'} | {m[0]:.1f}/{m[1]:.1f} | "
              f"{m[2]:.3f} | {m[3]:.3f} | {m[4]:.3f} | {m[5]:.3f} | {m[6]:.3f} | "
              f"{m[4] - m[5] - m[6]:.3f} | {m[7]:.4f} |")
    print(f"\nload {open('/proc/loadavg').read().split()[:3]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=200, help="calls per round, per component")
    ap.add_argument("--train-steps", type=int, default=60,
                    help="quick warm-up training steps so NFE counts are not those of an untrained field")
    ap.add_argument("--against", metavar="REV", default=None,
                    help="also time the odeint_cnf rows with cnf/ode/solve.py of this git revision")
    ap.add_argument("--only", default=None, help="only the components whose name contains this")
    ap.add_argument("--adjoint-split", action="store_true",
                    help="only: where a training iteration of FFJORD's toy config goes (adjoint "
                         "forward/backward NFE: field, VJP, solver), fused vs layer-wise pass")
    ap.add_argument("--split-steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.adjoint_split:
        adjoint_split(args.train_steps, args.split_steps)
        return
    torch.manual_seed(0)
    print(f"# bench_nfe  torch {torch.__version__}  torchdiffeq {torchdiffeq.__version__}  "
          f"torchode {getattr(torchode, '__version__', 'missing')}  threads 1  "
          f"load {open('/proc/loadavg').read().split()[:3]}", flush=True)
    net = ODENet(D, (64, 64, 64), "concatsquash", "tanh")
    end = _EndTime()
    # a little training (rk4, direct backprop) on 8gaussians so the field is not the init's
    from cnf.data.toy import sample
    data = sample("8gaussians", 20_000, seed=0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rk4 = SolverConfig(method="rk4", step_size=0.125, adjoint=False)
    for _ in range(args.train_steps):
        x = data[torch.randint(0, len(data), (B,))]
        z, logdet, _ = odeint_cnf(net, x, end, rk4)
        loss = -(-0.5 * z.pow(2).sum(1) + logdet).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    z = data[:B].clone()
    t = torch.tensor(0.25)
    basis = torch.eye(D).unsqueeze(1)

    def field():
        with torch.no_grad():
            return net(t, z)

    def field_jvp():
        with torch.no_grad():
            return net.forward_jvp(t, z, basis)

    def field_autograd():
        with torch.enable_grad():
            zz = z.detach().requires_grad_(True)
            f = net(t, zz)
            return divergence_exact(f, zz, create_graph=False)

    def train_eval():
        zz = z.detach().requires_grad_(True)
        f, jv = net.forward_jvp(t, zz, basis)
        div = jv.diagonal(dim1=0, dim2=2).sum(-1)
        (f.sum() + div.sum()).backward()

    y_triv = (z.clone(), torch.zeros(B, 1))
    n_triv = {"n": 0}

    def rhs_trivial(s, y):
        n_triv["n"] += 1
        return (-y[0], -y[1])

    def td_trivial(method: str) -> Callable[[], int]:
        def go():
            n_triv["n"] = 0
            s = (torch.linspace(0, 1, 5, dtype=torch.float64) if method == "rk4"
                 else torch.tensor([0.0, 1.0], dtype=torch.float64))
            with torch.no_grad():
                torchdiffeq.odeint(rhs_trivial, y_triv, s, method=method, rtol=1e-5, atol=1e-5)
            return n_triv["n"]
        return go

    dopri = SolverConfig(method="dopri5", rtol=1e-5, atol=1e-5, adjoint=True)

    def cnf_eval(config: SolverConfig) -> Callable[[], int]:
        def go():
            c = NFECounter()
            with torch.no_grad():
                odeint_cnf(net, z, end, config, counter=c)
            return c.forward
        return go

    def cnf_train_rk4():
        c = NFECounter()
        zz, logdet, _ = odeint_cnf(net, z, end, rk4, counter=c)
        (zz.pow(2).sum() - logdet.sum()).backward()
        return c.forward

    def cnf_train_dopri5_adjoint():
        c = NFECounter()
        zz, logdet, _ = odeint_cnf(net, z, end, dopri, counter=c)
        (zz.pow(2).sum() - logdet.sum()).backward()
        return c.forward + c.backward

    def torchode_solver(method: str):
        def rhs(s, y):  # s: [B]; y: [B, D+1]
            zz = y[:, :D]
            tt = (s * T).unsqueeze(1)
            f, jv = net.forward_jvp(tt, zz, basis)
            div = jv.diagonal(dim1=0, dim2=2).sum(-1)
            return torch.cat([T * f, (-T * div).unsqueeze(1)], 1)

        term = torchode.ODETerm(rhs)
        step = torchode.Dopri5(term=term) if method == "dopri5" else torchode.Tsit5(term=term)
        ctrl = torchode.IntegralController(atol=1e-5, rtol=1e-5, term=term)
        return torchode.AutoDiffAdjoint(step, ctrl)  # autograd through the steps

    def torchode_train(method: str) -> Callable[[], int]:
        solver = torchode_solver(method)
        t_eval = torch.tensor([0.0, 1.0]).repeat(B, 1)

        def go():
            y0 = torch.cat([z, torch.zeros(B, 1)], 1)
            sol = solver.solve(torchode.InitialValueProblem(y0=y0, t_eval=t_eval))
            y1 = sol.ys[:, -1]
            (y1[:, :D].pow(2).sum() + y1[:, D].sum()).backward()
            return int(sol.stats["n_f_evals"].max())
        return go

    def torchode_eval(method: str) -> Callable[[], int]:
        solver = torchode_solver(method)
        y0 = torch.cat([z, torch.zeros(B, 1)], 1)
        t_eval = torch.tensor([0.0, 1.0]).repeat(B, 1)

        def go():
            with torch.no_grad():
                sol = solver.solve(torchode.InitialValueProblem(y0=y0, t_eval=t_eval))
            return int(sol.stats["n_f_evals"].max())
        return go

    def td_packed(method: str) -> Callable[[], int]:
        """torchdiffeq on the same packed right-hand side torchode gets (no cnf bookkeeping)."""
        n = {"n": 0}

        def rhs(s, y):
            n["n"] += 1
            f, jv = net.forward_jvp(s.to(y.dtype) * T, y[:, :D], basis)
            div = jv.diagonal(dim1=0, dim2=2).sum(-1)
            return torch.cat([T * f, (-T * div).unsqueeze(1)], 1)

        y0 = torch.cat([z, torch.zeros(B, 1)], 1)
        s = torch.tensor([0.0, 1.0], dtype=torch.float64)

        def go():
            n["n"] = 0
            with torch.no_grad():
                torchdiffeq.odeint(rhs, y0, s, method=method, rtol=1e-5, atol=1e-5)
            return n["n"]
        return go

    # name -> (fn, is a solve returning NFE)
    comps: dict[str, tuple[Callable[[], object], bool]] = {
        "field": (field, False),
        "field+jvp (exact trace)": (field_jvp, False),
        "field+autograd trace": (field_autograd, False),
        "train field fwd+bwd (jvp)": (train_eval, False),
        "torchdiffeq trivial rk4": (td_trivial("rk4"), True),
        "torchdiffeq trivial dopri5": (td_trivial("dopri5"), True),
        "odeint_cnf eval rk4": (cnf_eval(rk4), True),
        "odeint_cnf eval dopri5": (cnf_eval(dopri), True),
        "torchdiffeq eval dopri5, packed RHS": (td_packed("dopri5"), True),
        "odeint_cnf train rk4 fwd+bwd": (cnf_train_rk4, True),
        "odeint_cnf train dopri5 adjoint (per fwd+bwd NFE)": (cnf_train_dopri5_adjoint, True),
    }
    if args.against:
        old = _solve_at(args.against)
        for name, fn in _old_rows(old, net, end, z, rk4, dopri).items():
            comps[f"{name} [{args.against}]"] = (fn, True)
    if torchode is not None:
        comps["torchode eval dopri5"] = (torchode_eval("dopri5"), True)
        comps["torchode eval tsit5"] = (torchode_eval("tsit5"), True)
        comps["torchode train dopri5 backprop (per fwd NFE)"] = (torchode_train("dopri5"), True)
    if args.only:
        comps = {k: v for k, v in comps.items() if args.only in k}
    times: dict[str, list[float]] = {k: [] for k in comps}
    nfes: dict[str, int] = {}
    for name, (fn, is_solve) in comps.items():  # warm-up (and torchode's first-call cost)
        out = fn()
        if is_solve:
            nfes[name] = int(out)
    for _ in range(args.rounds):
        for name, (fn, is_solve) in comps.items():
            reps = max(3, args.reps // (10 * nfes[name])) if is_solve else args.reps
            ms = _timeit(fn, reps)
            times[name].append(ms / nfes[name] if is_solve else ms)
    print(f"\n| component | NFE per solve | CPU ms per call or per NFE (median of {args.rounds}) |")
    print("|---|---|---|")
    for name in comps:
        nfe = str(nfes.get(name, "")) or "-"
        print(f"| {name} | {nfe} | {statistics.median(times[name]):.3f} |")
    print(f"\nload {open('/proc/loadavg').read().split()[:3]}")


if __name__ == "__main__":
    main()
