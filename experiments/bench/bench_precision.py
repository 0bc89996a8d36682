"""Mixed precision (bf16 autocast) and torch.compile: training-step time and NLL change per model.

For each model, one optimisation step (forward, NLL, backward, Adam) on a fixed toy batch is
timed in three modes, each in a fresh model copy with the same weights:

- ``fp32``: eager float32 (the default);
- ``bf16``: ``torch.autocast(device, dtype=torch.bfloat16)`` around forward and loss, as
  Lightning's ``--trainer.precision bf16-mixed`` does (on CUDA also ``16-mixed``);
- ``compile``: ``flow.compile()`` (``torch.compile`` of the flow's forward, default backend),
  as ``--run.compile true`` does; compile time is the first step, reported separately.

"ΔNLL" is the NLL of the same batch with the same weights (the fp32 model after the timed
steps; at initialisation many flows are the identity) in that mode minus fp32: what the mode
changes in the number you optimise. Times are medians over ``--steps`` steps after
``--warmup``. CPU only here: GPU numbers (where bf16/fp16 autocast and compile usually pay)
could not be measured on this machine; run the script on a GPU to get them
(``--device cuda``).

    python experiments/bench/bench_precision.py
    python experiments/bench/bench_precision.py --models realnvp maf --steps 30 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from cnf.data.toy import sample  # noqa: E402
from cnf.distributions import Density, StandardNormal  # noqa: E402


def build(name: str) -> tuple[Density, int]:
    """The model and its batch size (as in configs/experiment/toy_<name>.yaml)."""
    if name == "realnvp":
        from cnf.flows.coupling import RealNVP

        return Density(RealNVP(2, num_layers=8, hidden=64, depth=2), StandardNormal(2)), 512
    if name == "maf":
        from cnf.flows.autoregressive import MAF

        return Density(MAF(2), StandardNormal(2)), 512
    if name == "nsf":
        from cnf.flows.spline import NSF

        return Density(NSF(2), StandardNormal(2)), 512
    if name in ("ffjord", "ffjord_rk4"):
        from cnf.flows.continuous import FFJORD

        kw = ({"solver": {"method": "rk4", "step_size": 0.125, "adjoint": False}}
              if name == "ffjord_rk4" else {})
        return Density(FFJORD(dim=2, hidden=[64, 64, 64], T=0.5, **kw), StandardNormal(2)), 100
    raise SystemExit(f"unknown model {name!r}")


def nll(density: Density, x: torch.Tensor, mode: str, device: torch.device) -> torch.Tensor:
    if mode == "bf16":
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return -density.log_prob(x).float().mean()
    return -density.log_prob(x).mean()


def measure(name: str, mode: str, base: Density, x: torch.Tensor, steps: int, warmup: int,
            device: torch.device) -> dict:
    density = copy.deepcopy(base).to(device)
    if mode == "compile":
        density.flow.compile()
    opt = torch.optim.Adam(density.parameters(), lr=1e-3)
    times, first = [], None
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nll(density, x, mode, device)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        if i == 0:
            first = dt
        if i >= warmup:
            times.append(dt)
    ok = all(bool(torch.isfinite(p).all()) for p in density.parameters())
    return {"model": name, "mode": mode, "ms": statistics.median(times) * 1000,
            "first_ms": first * 1000, "ok": ok, "density": density}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["realnvp", "maf", "nsf", "ffjord_rk4", "ffjord"])
    p.add_argument("--modes", nargs="+", default=["fp32", "bf16", "compile"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    for name in args.models:
        base, batch = build(name)
        x = sample("8gaussians", batch, seed=0).to(device)
        with torch.no_grad():
            base.to(device).log_prob(x[:8])  # data-dependent initialisation, if any
        base = base.cpu()
        for mode in args.modes:
            try:
                rows.append(measure(name, mode, base, x, args.steps, args.warmup, device))
            except Exception as exc:  # a mode a model does not support is a finding too
                rows.append({"model": name, "mode": mode, "error": f"{type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:80]}"})
    load = os.getloadavg()
    print(f"\n## bench_precision ({device.type}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f})\n")
    print("| model | mode | step (ms, median) | speed-up vs fp32 | first step (ms) | ΔNLL vs fp32 |")
    print("|---|---|---|---|---|---|")
    ref = {r["model"]: r for r in rows if r.get("mode") == "fp32" and "ms" in r}
    for r in rows:  # every mode evaluated on the trained fp32 weights
        if "density" in r and r["model"] in ref:
            trained = ref[r["model"]]["density"].state_dict()
            r["density"].load_state_dict(trained)
            x = sample("8gaussians", 512, seed=1).to(device)
            r["nll"] = float(nll(r["density"], x, r["mode"], device).detach())
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['mode']} | failed: {r['error']} | | | |")
            continue
        f = ref.get(r["model"])
        speed = f"{f['ms'] / r['ms']:.2f}x" if f else "—"
        dnll = f"{r['nll'] - f['nll']:+.1e}" if f and "nll" in r else "—"
        print(f"| {r['model']} | {r['mode']} | {r['ms']:.1f} | {speed} | {r['first_ms']:.0f} | "
              f"{dnll} |" + ("" if r["ok"] else " non-finite weights"))


if __name__ == "__main__":
    main()
