"""Report figures (matplotlib, Agg): learning curves against steps and wall time, and the
cost / quality scatter. Every figure is one PNG; every model keeps one colour throughout."""

from __future__ import annotations

from pathlib import Path

from cnf.report.runs import Group, Run

__all__ = ["colours", "learning_curves", "cost_quality", "pick_metric", "log_ticks"]

# the first of these that some run logged is the curve / table metric
# (bits/dim for images, NLL for densities, importance-weighted NLL for VAEs, KL / free
# energy for variational inference); all lower-is-better
EVAL_METRICS = ("val/bpd", "val/nll", "val/nll_iw", "val/kl", "val/free_energy",
                "val/neg_elbo", "val/loss")
TRAIN_METRICS = ("train/loss", "train/nll")
TEST_METRICS = ("test/bpd", "test/nll", "test/nll_iw", "test/kl", "test/free_energy",
                "test/neg_elbo", "test/loss")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colours(labels: list[str]) -> dict[str, tuple]:
    """One colour per model label (tab10, then tab20)."""
    plt = _plt()
    names = sorted(set(labels))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def pick_metric(runs: list[Run], candidates: tuple[str, ...]) -> str | None:
    """The first metric in ``candidates`` that any run has in its history or summary."""
    for key in candidates:
        if any(key in r.history or key in r.metrics for r in runs):
            return key
    return None


def _smooth(values: list[float], window: int) -> list[float]:
    if window <= 1 or len(values) < 3:
        return values
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _time_at(run: Run, steps: list[int]) -> list[float] | None:
    """Wall time (s since fit start) at ``steps``, interpolated from the run's clock."""
    clock = run.elapsed_at()
    if not clock:
        return None
    xs = [s for s, _ in clock]
    ts = [t for _, t in clock]
    out = []
    j = 0
    for s in steps:
        while j + 1 < len(xs) and xs[j + 1] < s:
            j += 1
        if s <= xs[0]:
            out.append(ts[0] * (s / xs[0]) if xs[0] else ts[0])
        elif j + 1 < len(xs):
            x0, x1, t0, t1 = xs[j], xs[j + 1], ts[j], ts[j + 1]
            out.append(t0 + (t1 - t0) * (s - x0) / max(x1 - x0, 1))
        else:
            rate = ts[-1] / xs[-1] if xs[-1] else 0.0
            out.append(ts[-1] + rate * (s - xs[-1]))
    return out


def _ylim(series: list[list[float]]) -> tuple[float, float] | None:
    """Limits that ignore the first 10% of each curve (initial losses dwarf the rest)."""
    vals = [v for s in series for v in s[len(s) // 10:]]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    pad = (hi - lo) * 0.08 or abs(hi) * 0.05 or 0.1
    return lo - pad, hi + pad


def _round_sig(x: float, digits: int = 2) -> float:
    return float(f"{x:.{digits}g}")


def log_ticks(ax, lo: float, hi: float) -> list[float]:
    """A log-scaled x-axis over ``[lo, hi]`` (positive; padded a little) that always shows
    at least two labelled ticks: 1-2-5 steps per decade where two of them fall in the range,
    else about four evenly spaced (in log) values rounded to two significant figures.
    Matplotlib's own log locator labels only powers of ten, so a narrow range had none."""
    import math

    lo = max(lo, hi * 1e-6, 1e-12) if hi > 0 else 1e-3
    hi = max(hi, lo * 1.0001)
    lo, hi = lo / 1.25, hi * 1.25
    ticks = [m * 10 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
             for m in (1, 2, 5) if lo <= m * 10 ** e <= hi]
    if len(ticks) > 8:  # wide ranges: powers of ten only
        ticks = [t for t in ticks if f"{t:g}".lstrip("0.").startswith("1")] or ticks
    if len(ticks) < 2:
        ratio = (hi / lo) ** (1 / 5)
        ticks = sorted({_round_sig(lo * ratio ** k) for k in range(1, 5)})
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    return ticks


def learning_curves(groups: list[Group], path: Path, title: str) -> Path | None:
    """One row per dataset; columns: the training loss against steps, the validation metric
    against steps and against wall time. One line per seed, one colour per model. Returns
    ``None`` when no run has a history."""
    runs = [r for g in groups for r in g.runs if r.history]
    if not runs:
        return None
    plt = _plt()
    train_key = pick_metric(runs, TRAIN_METRICS)
    eval_key = pick_metric(runs, EVAL_METRICS)
    panels = [(k, x) for k, x in ((train_key, "step"), (eval_key, "step"), (eval_key, "time"))
              if k]
    if not eval_key and train_key:
        panels.append((train_key, "time"))
    datasets = list(dict.fromkeys(g.data for g in groups))
    col = colours([g.label for g in groups])
    fig, axes = plt.subplots(len(datasets), len(panels),
                             figsize=(4.6 * len(panels) + 1.8, 3.3 * len(datasets)), squeeze=False)
    for row, data in enumerate(datasets):
        for c, (key, xaxis) in enumerate(panels):
            ax = axes[row][c]
            series_all: list[list[float]] = []
            for g in groups:
                if g.data != data:
                    continue
                first = True
                for r in g.runs:
                    pts = r.history.get(key, [])
                    if not pts:
                        continue
                    steps = [s for s, _ in pts]
                    values = [v for _, v in pts]
                    if key.startswith("train/"):
                        values = _smooth(values, 5)
                    xs = steps if xaxis == "step" else _time_at(r, steps)
                    if xs is None:
                        continue
                    series_all.append(values)
                    ax.plot(xs, values, color=col[g.label], lw=1.4,
                            label=g.label if first else None,
                            marker="o" if len(pts) < 12 else None, ms=3)
                    first = False
            lim = _ylim(series_all)
            if lim:
                ax.set_ylim(*lim)
            ax.set_xlabel("training step" if xaxis == "step" else "wall time since fit start (s)")
            ax.set_ylabel(key + (" (smoothed)" if key.startswith("train/") else ""))
            ax.set_title(data, fontsize=10)
            ax.grid(alpha=0.3)
    handles, names = [], []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(0.865, 0.5), fontsize=9,
               frameon=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=85)
    plt.close(fig)
    return path


def cost_quality(groups: list[Group], path: Path, title: str) -> Path | None:
    """Per dataset: the test metric against the median training-step time, one point per
    model (mean ± std over seeds as error bars). ``None`` when no run has both numbers."""
    runs = [r for g in groups for r in g.finished]
    key = pick_metric(runs, TEST_METRICS)
    if key is None:
        return None
    datasets = list(dict.fromkeys(g.data for g in groups))
    pts: dict[str, list] = {}
    for g in groups:
        q, c = g.stat(key), g.stat("time/train_step_s") or g.stat("s_per_step")
        if q and c:
            pts.setdefault(g.data, []).append((g.label, q, c))
    datasets = [d for d in datasets if d in pts]
    if not datasets:
        return None
    plt = _plt()
    col = colours([g.label for g in groups])
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.6), squeeze=False)
    better = "lower"
    for ax, data in zip(axes[0], datasets):
        for label, (qm, qs, _), (cm, cs, _) in pts[data]:
            ax.errorbar(cm * 1000, qm, xerr=cs * 1000, yerr=qs, fmt="o", color=col[label],
                        ms=7, capsize=3)
            ax.annotate(label, (cm * 1000, qm), textcoords="offset points", xytext=(6, 4),
                        fontsize=8)
        lo = min((cm - cs) * 1000 for _, _, (cm, cs, _) in pts[data])
        hi = max((cm + cs) * 1000 for _, _, (cm, cs, _) in pts[data])
        log_ticks(ax, lo, hi)
        ax.set_xlabel("training step (ms, median, log)")
        ax.set_ylabel(f"{key} ({better} is better)")
        ax.set_title(data, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=85)
    plt.close(fig)
    return path
