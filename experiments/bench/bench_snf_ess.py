"""Does adding Langevin layers to a deterministic flow lower the ESS? (issue 15)

For each target (U2–U4 by default) and seed, trains in lockstep, one optimizer step each in
turn, from the same initial RealNVP weights and with the same β schedule as the
``vi_u<k>_realnvp`` / ``vi_u<k>_snf`` configs:

- ``realnvp``: the RealNVP alone (reverse KL, ``cnf.lightning.vi.ReverseKL``);
- ``snf``: the same RealNVP with the config's unadjusted Langevin layers (2 steps of a fixed
  ε = 0.01 after every 4 couplings; ``cnf.lightning.vi.StochasticFlowVI``, reverse path KL);
- ``snf_learned``: as ``snf`` with ``learn_step_size=True`` (each layer's log ε learned);
- ``snf_mala``: as ``snf`` with Metropolis-adjusted steps (``mala=True``);
- ``snf_anneal``: as ``snf_learned`` with intermediate energies (``anneal=True``: λ = ½, 1);
- ``snf_tempered``: as ``snf_learned`` with ``temper_kernels=True`` (the Langevin layers move
  on β U while β anneals, the target the loss fits, instead of U);
- ``snf_both``: as ``snf_tempered`` trained by the reverse plus the forward path KL
  (``path_kl="both"``; the forward paths start from importance-resampled path ends);

then prints, per model, the ESS fraction and KL (path KL for the SNFs) and the importance-
sampled log Z error on ``--eval`` fresh samples, the final step sizes and the seconds per step.
The modules' own ``sample_terms`` and ``estimates`` are used; the loop replaces Lightning's
(Adam, gradient-norm clipping at 100 as ``configs/trainer/vi.yaml``).

    OMP_NUM_THREADS=1 python experiments/bench/bench_snf_ess.py --steps 1500 --seeds 0,1
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from cnf.distributions import Density, StandardNormal
from cnf.flows.coupling import RealNVP
from cnf.lightning.vi import ReverseKL, StochasticFlowVI
from cnf.vi.targets import EnergyTarget

MODELS = ("realnvp", "snf", "snf_learned", "snf_mala", "snf_anneal", "snf_tempered",
          "snf_both")


def build(model: str, target: str, seed: int, anneal_steps: int, step_size: float):
    torch.manual_seed(seed)  # the same RealNVP weights for every model
    density = Density(RealNVP(2, num_layers=8, hidden=64, depth=2, act="relu", scale_bound=3.0),
                      StandardNormal(2))
    common = dict(target=EnergyTarget(target), num_samples=512, beta_start=0.01,
                  anneal_steps=anneal_steps, plot=False)
    if model == "realnvp":
        return ReverseKL(density, **common)
    return StochasticFlowVI(density, every=4, langevin_steps=2, step_size=step_size,
                            mala=model == "snf_mala", anneal=model == "snf_anneal",
                            learn_step_size=model not in ("snf", "snf_mala"),
                            temper_kernels=model in ("snf_tempered", "snf_both"),
                            path_kl="both" if model == "snf_both" else "reverse", **common)


def step_sizes(module) -> str:
    snf = getattr(module, "snf", None)
    if snf is None:
        return "-"
    return ",".join(f"{float(lay.step_size.detach()):.4f}" for lay in snf.langevin)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default="u2,u3,u4")
    ap.add_argument("--models", default=",".join(MODELS[:3]))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--anneal-steps", type=int, default=1000)
    ap.add_argument("--step-size", type=float, default=0.01)
    ap.add_argument("--eval", type=int, default=20_000)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    models = args.models.split(",")
    print(f"# steps {args.steps}, anneal {args.anneal_steps}, eval {args.eval} samples, "
          f"load {os.getloadavg()[0]:.2f}")
    print("| target | seed | model | ESS | KL | log Z err | step sizes | s/step |")
    print("|---|---|---|---|---|---|---|---|")
    for target in args.targets.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            mods = {m: build(m, target, seed, args.anneal_steps, args.step_size) for m in models}
            opts = {m: torch.optim.Adam(mod.parameters(), lr=args.lr) for m, mod in mods.items()}
            secs = dict.fromkeys(models, 0.0)
            gen_seed = 10_000 * seed
            for step in range(args.steps):
                for m, mod in mods.items():
                    torch.manual_seed(gen_seed + step)  # the same base noise for every model
                    t0 = time.perf_counter()
                    beta = mod.beta(step)
                    if getattr(mod, "temper_kernels", False):
                        _, log_q, energy = mod.sample_terms(mod.num_samples, beta)
                    else:
                        _, log_q, energy = mod.sample_terms(mod.num_samples)
                    loss = (log_q + beta * energy).mean()
                    if getattr(mod, "path_kl", "reverse") == "both":
                        loss = loss - mod.forward_path_terms(mod.num_samples)[0].mean()
                    opts[m].zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(mod.parameters(), 100.0)
                    opts[m].step()
                    secs[m] += time.perf_counter() - t0
            for m, mod in mods.items():
                torch.manual_seed(123_456 + seed)
                with torch.enable_grad():
                    est = mod.estimates(args.eval)
                print(f"| {target} | {seed} | {m} | {est['ess']:.3f} | {est['kl']:.3f} | "
                      f"{est['log_z'] - est['log_z_ref']:+.3f} | {step_sizes(mod)} | "
                      f"{secs[m] / args.steps:.3f} |", flush=True)
    print(f"# load at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
