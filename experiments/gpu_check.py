"""GPU check: every family a few training steps in fp32 and bf16-mixed, a 1-device DDP run, and
the CPU-vs-device log-prob agreement of one batch; prints one table.

    make gpu-check                      # on a CUDA machine: the experiment configs as shipped
    python experiments/gpu_check.py --tiny --only MAF,VAE

For each family (RealNVP, Glow, MAF, NSF, FFJORD, FFJORD multiscale, Residual Flow, VAE, VI)
the model and data come from its experiment config through the `cnf` CLI (so the check sees
what users train), then a plain Lightning Trainer runs ``--steps`` steps per precision and
reports the median seconds per step (first step left out, CUDA synchronized) and peak memory:
``torch.cuda.max_memory_allocated`` on a GPU, the process's peak RSS on a CPU (monotone over
the whole script, so only its growth means anything). The agreement column is the largest
``|log p_cpu - log p_device|`` over one evaluation batch of the fp32-trained model (density
models: ``log p(x)``, exact log-dets where the model has them; VAE: ``log p(x, z) - log q(z|x)``
at fixed latents; VI: ``log q(z)`` at fixed points).

Without CUDA the same code runs on the CPU with tiny sizes (``--tiny`` is then the default):
``tests/test_gpu_check.py`` runs it in CI so it cannot rot; there the agreement column
compares the CPU with itself and only checks that the path works. Exit status 1 when a step
fails, a loss is not finite, or an agreement exceeds its tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import math
import os
import resource
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FLOW = "--model.init_args.density.init_args.flow.init_args."


@dataclass(frozen=True)
class Family:
    name: str
    config: str  # configs/experiment/<config>.yaml
    tiny: tuple[str, ...] = ()  # CLI overrides that shrink it for the CPU run
    full: tuple[str, ...] = ()  # CLI overrides for the device run (none: as shipped)


DATA_BATCH = "--data.init_args.batch_size"
FAMILIES = [
    Family("RealNVP", "digits_realnvp", (DATA_BATCH, "16", f"{FLOW}hidden", "8")),
    Family("Glow", "digits_glow", (DATA_BATCH, "16", f"{FLOW}hidden", "8", f"{FLOW}steps", "2")),
    Family("MAF", "toy_maf", (DATA_BATCH, "64", f"{FLOW}hidden", "[16, 16]")),
    Family("NSF", "toy_nsf", (DATA_BATCH, "64")),
    Family("FFJORD", "toy_ffjord", (DATA_BATCH, "32", f"{FLOW}hidden", "[16, 16]")),
    Family("FFJORD multiscale", "digits_ffjord",
           (DATA_BATCH, "8", "--data.init_args.eval_batch_size", "8", f"{FLOW}hidden", "[8]")),
    Family("Residual Flow", "toy_resflow", (DATA_BATCH, "64", f"{FLOW}hidden", "16",
                                            f"{FLOW}num_blocks", "2")),
    Family("VAE", "vae_iaf", (DATA_BATCH, "16")),
    Family("VI", "vi_u1_realnvp", ("--model.init_args.num_samples", "64",
                                   "--model.init_args.eval_samples", "256")),
]


@dataclass
class Row:
    family: str
    cells: dict[str, str] = field(default_factory=dict)
    ok: bool = True
    errors: list[str] = field(default_factory=list)


def build(family: Family, tiny: bool, root: Path):
    """The family's LightningModule and DataModule, built by the `cnf` CLI from its config."""
    from cnf.cli import run

    args = ["--config", str(REPO / "configs" / "experiment" / f"{family.config}.yaml"),
            "--run.root", str(root), "--run.wandb", "disabled"]
    args += list(family.tiny if tiny else family.full)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        cli = run(args, run=False)
    return cli.model, cli.datamodule


def _step_clock(cuda: bool):
    """A Lightning callback recording the wall time of every training step (CUDA
    synchronized) and its loss."""
    import lightning as L
    import torch

    class StepClock(L.Callback):
        def __init__(self):
            self.times: list[float] = []
            self.losses: list[float] = []
            self._t = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if cuda:
                torch.cuda.synchronize()
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._t)
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            if loss is not None:
                self.losses.append(float(loss.detach().float()))

    return StepClock()


def fit_steps(model, dm, *, accelerator: str, precision: str, steps: int, root: Path,
              strategy: str = "auto") -> dict[str, float]:
    """Train ``steps`` steps; returns ``s_per_step`` (median, first step left out), ``peak_mb``
    and the last ``loss``."""
    import lightning as L
    import torch

    cuda = accelerator == "gpu"
    clock = _step_clock(cuda)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    trainer = L.Trainer(accelerator=accelerator, devices=1, strategy=strategy,
                        precision=precision, max_steps=steps, max_epochs=-1,
                        limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, inference_mode=False,
                        default_root_dir=str(root), callbacks=[clock])
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(model, datamodule=dm)
    if strategy.startswith("ddp") and torch.distributed.is_available() \
            and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    times = clock.times[1:] or clock.times
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"s_per_step": statistics.median(times) if times else math.nan, "peak_mb": peak,
            "loss": clock.losses[-1] if clock.losses else math.nan,
            "steps": float(trainer.global_step)}


def _eval_batch(model, dm):
    """One evaluation batch (CPU tensors) for the agreement check."""
    import torch

    torch.manual_seed(0)
    kind = type(model).__name__
    if kind == "ReverseKL":
        dim = int(getattr(model.target, "dim", 2))
        return torch.randn(256, dim)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    x = model.batch_data(batch)
    if kind == "VAE":
        return x[:64], torch.randn(min(64, x.shape[0]), model.vae.latent_dim)
    return x[:64]


def log_prob(model, batch):
    """The per-example log-density the agreement column compares (see the module docstring)."""
    import torch

    from cnf.flows.base import exact_logdet

    kind = type(model).__name__
    with torch.enable_grad():  # CNF divergences and numerical inverses need autograd
        if kind == "VAE":
            x, z = batch
            vae = model.vae
            return (vae.log_likelihood(x, z) + vae.log_prior(z) - vae.log_q(z, x)).detach()
        exact = bool(getattr(model, "exact_eval", False))
        with exact_logdet(model.density, exact):
            return model.density.log_prob(batch).detach()


def agreement(model, batch, device: str) -> tuple[float, float]:
    """``(max |log p_cpu - log p_device|, mean |log p|)`` on ``batch``."""
    import torch

    def to(b, dev):
        return tuple(t.to(dev) for t in b) if isinstance(b, tuple) else b.to(dev)

    dev_model = model.to(device).eval()
    cpu_model = copy.deepcopy(model).to("cpu").eval()
    torch.manual_seed(0)
    lp_dev = log_prob(dev_model, to(batch, device)).double().cpu()
    torch.manual_seed(0)
    lp_cpu = log_prob(cpu_model, to(batch, "cpu")).double()
    return float((lp_dev - lp_cpu).abs().max()), float(lp_cpu.abs().mean())


def check(family: Family, *, tiny: bool, steps: int, accelerator: str, device: str,
          precisions: tuple[str, ...], ddp: bool) -> Row:
    import torch

    row = Row(family.name)
    with tempfile.TemporaryDirectory(prefix="cnf-gpu-check-") as tmp:
        root = Path(tmp)
        fp32_model = None
        for precision in precisions:
            key = "fp32" if precision.startswith("32") else precision.split("-")[0]
            try:
                torch.manual_seed(0)
                model, dm = build(family, tiny, root)
                r = fit_steps(model, dm, accelerator=accelerator, precision=precision,
                              steps=steps, root=root)
                if not math.isfinite(r["loss"]) or r["steps"] < steps:
                    raise RuntimeError(f"loss {r['loss']} after {r['steps']:.0f} steps")
                row.cells[f"{key} ms/step"] = f"{r['s_per_step'] * 1000:.1f}"
                row.cells[f"{key} peak MB"] = f"{r['peak_mb']:.0f}"
                row.cells[f"{key} loss"] = f"{r['loss']:.3g}"
                if key == "fp32":
                    fp32_model, fp32_dm = model, dm
            except Exception as exc:  # one failing cell must not hide the others
                row.ok = False
                row.cells[f"{key} ms/step"] = "FAIL"
                row.errors.append(f"{family.name} {precision}: {type(exc).__name__}: {exc}\n"
                                  + traceback.format_exc(limit=-3))
        if ddp:
            try:
                model, dm = build(family, tiny, root)
                r = fit_steps(model, dm, accelerator=accelerator, precision="32-true",
                              steps=min(steps, 3), root=root, strategy="ddp")
                if not math.isfinite(r["loss"]):
                    raise RuntimeError(f"loss {r['loss']}")
                row.cells["DDP(1)"] = "ok"
            except Exception as exc:
                row.ok = False
                row.cells["DDP(1)"] = "FAIL"
                row.errors.append(f"{family.name} ddp: {type(exc).__name__}: {exc}\n"
                                  + traceback.format_exc(limit=-3))
        if fp32_model is not None:
            try:
                batch = _eval_batch(fp32_model, fp32_dm)
                diff, scale = agreement(fp32_model, batch, device)
                tol = 1e-3 * (1.0 + scale)
                row.cells["max Δlog p"] = f"{diff:.1e}"
                row.cells["agree"] = "ok" if diff <= tol else f"NO (tol {tol:.0e})"
                row.ok &= diff <= tol
            except Exception as exc:
                row.ok = False
                row.cells["agree"] = "FAIL"
                row.errors.append(f"{family.name} log-prob: {type(exc).__name__}: {exc}\n"
                                  + traceback.format_exc(limit=-3))
    return row


COLUMNS = ["fp32 ms/step", "fp32 peak MB", "fp32 loss", "bf16 ms/step", "bf16 peak MB",
           "bf16 loss", "DDP(1)", "max Δlog p", "agree"]


def table(rows: list[Row]) -> str:
    cols = [c for c in COLUMNS if any(c in r.cells for r in rows)]
    header = ["family"] + cols
    body = [[r.family] + [r.cells.get(c, "—") for c in cols] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [line(b) for b in body])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=None,
                   help="training steps per precision (default: 10 on CUDA, 3 on CPU)")
    p.add_argument("--only", default="", help="comma-separated family names (default: all)")
    p.add_argument("--tiny", action=argparse.BooleanOptionalAction, default=None,
                   help="shrink batches and widths (default: on without CUDA)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even if CUDA is there")
    p.add_argument("--no-ddp", dest="ddp", action="store_false", help="skip the DDP run")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="fp32 only")
    args = p.parse_args(argv)
    wanted = {n.strip().lower() for n in args.only.split(",") if n.strip()}
    families = [f for f in FAMILIES if not wanted or f.name.lower() in wanted]
    unknown = wanted - {f.name.lower() for f in FAMILIES}
    if unknown:
        p.error(f"unknown families {sorted(unknown)}; choose from "
                f"{', '.join(f.name for f in FAMILIES)}")
    os.environ.setdefault("WANDB_MODE", "disabled")
    import logging

    import lightning  # noqa: F401  (sets its loggers to INFO on import; quieted below)
    import torch

    for name in ("lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)

    cuda = torch.cuda.is_available() and not args.cpu
    tiny = (not cuda) if args.tiny is None else args.tiny
    steps = args.steps or (10 if cuda else 3)
    device = "cuda" if cuda else "cpu"
    name = torch.cuda.get_device_name(0) if cuda else "CPU (no CUDA: tiny sizes, CPU vs CPU)"
    print(f"cnf gpu-check: {name}; torch {torch.__version__}; {steps} steps per precision; "
          f"{'tiny' if tiny else 'shipped'} sizes; load {os.getloadavg()[0]:.1f}", flush=True)
    precisions = ("32-true", "bf16-mixed") if args.bf16 else ("32-true",)
    rows = []
    for fam in families:
        t = time.perf_counter()
        row = check(fam, tiny=tiny, steps=steps, accelerator="gpu" if cuda else "cpu",
                    device=device, precisions=precisions, ddp=args.ddp)
        rows.append(row)
        print(f"  {fam.name}: {'ok' if row.ok else 'FAILED'} ({time.perf_counter() - t:.0f} s)",
              flush=True)
    print()
    print(table(rows))
    errors = [e for r in rows for e in r.errors]
    if errors:
        print("\nfailures:")
        for e in errors:
            print("  " + e.rstrip().replace("\n", "\n    "))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
