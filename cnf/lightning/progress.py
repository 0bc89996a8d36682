"""Progress for logs and CI: one line every N steps instead of a redrawn bar, and the
``time/elapsed_s`` clock that reports plot learning curves against (continued across the
segments of a resumed run).

A line reads::

    [fit] step 250/2000 12% | loss 3.214 | nfe 62/38 | val/nll 3.301 | 21.0 ms/step | 5s elapsed, ETA 36s

``cnf`` picks these lines automatically when stdout is not a terminal (``--run.progress``).
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks.progress import ProgressBar

__all__ = ["LineProgressBar", "ElapsedTime", "format_duration", "finite_float"]


def format_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def finite_float(value: Any) -> float | None:
    """``float(value)`` when it is a finite number (tensors included), else ``None``."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class LineProgressBar(ProgressBar):
    """Print a compact progress line every ``every_n_steps`` optimisation steps (default:
    about 20 lines per run) and at least every ``every_s`` seconds, a line per validation and
    one at the end of fit / validate / test. Only global rank 0 prints.

    Args:
        every_n_steps: steps between lines (``None``: ``max_steps / 20``, at least 1).
        every_s: also print when this many seconds passed since the last line.
        stream: where to write (default ``sys.stdout``, flushed per line).
    """

    def __init__(self, every_n_steps: int | None = None, every_s: float = 30.0,
                 stream: TextIO | None = None):
        super().__init__()
        self.every_n_steps = every_n_steps
        self.every_s = every_s
        self.stream = stream
        self._enabled = True
        self._t0 = 0.0
        self._last_t = 0.0
        self._last_step = 0
        self._start_step = 0
        self.lines: list[str] = []

    # ProgressBar API
    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def print(self, *args: Any, sep: str = " ", **kwargs: Any) -> None:
        self._write(sep.join(map(str, args)))

    def _write(self, line: str) -> None:
        if not self._enabled or (self._trainer is not None and not self.trainer.is_global_zero):
            return
        self.lines.append(line)
        stream = self.stream or sys.stdout
        print(line, file=stream, flush=True)

    # helpers
    def _max_steps(self, trainer: L.Trainer) -> int | None:
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        n = trainer.num_training_batches
        if trainer.max_epochs and trainer.max_epochs > 0 and isinstance(n, int) and n > 0:
            return int(trainer.max_epochs * n)
        return None

    def _every(self, trainer: L.Trainer) -> int:
        if self.every_n_steps:
            return max(1, int(self.every_n_steps))
        total = self._max_steps(trainer)
        return max(1, total // 20) if total else 50

    def _metrics(self, trainer: L.Trainer, prefix: str) -> str:
        m = trainer.callback_metrics
        parts = []
        for key, name in ((f"{prefix}/loss", "loss"),):
            v = finite_float(m.get(key))
            if v is not None:
                parts.append(f"{name} {v:.4g}")
        fwd, bwd = finite_float(m.get(f"{prefix}/nfe_forward")), finite_float(m.get(f"{prefix}/nfe_backward"))
        if fwd is not None:
            parts.append(f"nfe {fwd:.0f}" + (f"/{bwd:.0f}" if bwd is not None else ""))
        for key in ("val/bpd", "val/nll", "val/loss"):
            v = finite_float(m.get(key))
            if v is not None:
                parts.append(f"{key} {v:.4g}")
                break
        return " | ".join(parts)

    # hooks
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._last_t = time.perf_counter()
        self._last_step = self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        now = time.perf_counter()
        if step == self._last_step:
            return
        due = step % self._every(trainer) == 0 or step == 1 or now - self._last_t >= self.every_s
        if not due:
            return
        rate = (now - self._last_t) / max(step - self._last_step, 1)
        total = self._max_steps(trainer)
        elapsed = now - self._t0
        head = f"[fit] step {step}" + (f"/{total} {100 * step / total:3.0f}%" if total else "")
        eta = None
        if total:
            eta = (total - step) * elapsed / max(step - self._start_step, 1)
        timer = next((cb for cb in trainer.callbacks if type(cb).__name__ == "Timer"), None)
        if timer is not None and getattr(timer, "_duration", None):
            left = timer._duration - elapsed
            eta = left if eta is None else min(eta, left)
        parts = [head, self._metrics(trainer, "train"), f"{rate * 1000:.1f} ms/step",
                 f"{format_duration(elapsed)} elapsed" + (f", ETA {format_duration(eta)}"
                                                          if eta is not None else "")]
        self._write(" | ".join(p for p in parts if p))
        self._last_t, self._last_step = now, step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        stage = "fit" if trainer.state.fn == "fit" else "validate"
        vals = " | ".join(f"{k} {f:.4g}" for k, v in sorted(trainer.callback_metrics.items())
                          if k.startswith("val/") and (f := finite_float(v)) is not None)
        self._write(f"[{stage}] validation at step {trainer.global_step} | {vals}")

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        elapsed = time.perf_counter() - self._t0
        self._write(f"[fit] done: {trainer.global_step} steps in {format_duration(elapsed)}"
                    + (f" | {self._metrics(trainer, 'train')}" if self._metrics(trainer, "train") else ""))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        vals = " | ".join(f"{k} {f:.5g}" for k, v in sorted(trainer.callback_metrics.items())
                          if k.startswith("test/") and (f := finite_float(v)) is not None)
        self._write(f"[test] {vals}")


class ElapsedTime(L.Callback):
    """Log ``time/elapsed_s``: seconds since the start of fit, on the training steps the
    loggers write (every ``log_every_n_steps``-th, and the last), for curves against wall
    time."""

    def __init__(self) -> None:
        super().__init__()
        self._t0: float | None = None
        self._before = 0.0  # seconds of earlier segments of a resumed run

    def elapsed(self) -> float:
        """Seconds of training so far, earlier segments of a resumed run included."""
        return self._before + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_s": float(self.elapsed())}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._before = float(state_dict.get("elapsed_s", 0.0))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        # only on the steps the loggers write (and the last): a `log` call costs about as
        # much as a small model's step would save (experiments/bench/bench_overhead.py)
        step, every = trainer.global_step, trainer.log_every_n_steps
        due = (bool(every and step % every == 0) or trainer.should_stop
               or 0 < (trainer.max_steps or 0) <= step)
        if self._t0 is not None and due:
            pl_module.log("time/elapsed_s", self.elapsed(), on_step=True,
                          on_epoch=False)
