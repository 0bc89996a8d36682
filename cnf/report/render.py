"""Write the comparison report: ``report.md`` + ``figures/*.png`` and one self-contained
``report.html`` (images embedded as base64), from the runs under a folder."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cnf.report.figures import TEST_METRICS, cost_quality, learning_curves, pick_metric
from cnf.report.runs import Group, Run, config_differences, group_runs, load_runs

__all__ = ["Column", "write_report", "table_columns", "format_stat", "inline_html"]


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    digits: int = 3
    scale: float = 1.0


# the table's columns, in order; a column shows when some run has the number
_FIXED = [
    Column("test/bpd", "test bits/dim", 3),
    Column("test/nll", "test NLL (nats)", 3),
    Column("test/nfe_forward", "NFE test fwd", 0),
    Column("test/nfe", "NFE test", 0),
    Column("train/nfe_forward", "NFE train fwd", 0),
    Column("train/nfe_backward", "NFE train bwd", 0),
    Column("wall_time_s", "fit wall time (s)", 1),
    Column("time/train_step_s", "train step (ms, median)", 1, 1000.0),
    Column("s_per_step", "fit s/step", 3),
    Column("steps", "steps", 0),
    Column("parameters", "parameters", 0),
    Column("peak_memory_mb", "peak RSS (MB)", 0),
    Column("peak_gpu_mb", "peak GPU (MB)", 0),
]
_SKIP_TEST = {"test/nll_per_dim", "test/log_z_ref"}
_LEGEND = (
    "Mean ± standard deviation over finished seeds (n in the *seeds* column). "
    "NLL in nats per example (bits/dim where shown); lower is better. "
    "*NFE train fwd/bwd*: ODE function evaluations per training step (forward solve / adjoint), "
    "mean over the last quarter of the logged steps; *NFE test fwd*: per evaluation batch. "
    "*train step*: median time of one optimisation step; *fit s/step*: fit wall time (with "
    "validation, checkpointing and start-up) divided by steps. *peak RSS*: the training "
    "process's peak resident memory, imports included (≈340 MB of it)."
)


def _lower_is_better(key: str) -> bool:
    return not key.endswith(("/elbo", "/accuracy", "/acc", "/ess"))


def table_columns(groups: list[Group]) -> list[Column]:
    """The fixed columns some run has, with any other ``test/*`` metric after the first two."""
    runs = [r for g in groups for r in g.finished]
    have = lambda key: any(r.metric(key) is not None for r in runs)  # noqa: E731
    cols = [c for c in _FIXED if have(c.key)]
    fixed = {c.key for c in _FIXED}
    extra = sorted({k for r in runs for k in r.metrics
                    if k.startswith("test/") and k not in fixed and k not in _SKIP_TEST
                    and "nfe" not in k})
    at = sum(c.key.startswith("test/") for c in cols[:2])

    def digits(key: str) -> int:  # counters (all whole numbers) print without decimals
        vals = [v for r in runs if (v := r.metric(key)) is not None]
        return 0 if vals and all(float(v).is_integer() for v in vals) else 3

    return cols[:at] + [Column(k, k, digits(k)) for k in extra] + cols[at:]


def format_stat(stat: tuple[float, float, int] | None, col: Column) -> str:
    """``1.234 ± 0.010`` (or ``1.234`` for one seed); ``—`` when missing."""
    if stat is None:
        return "—"
    mean, std, n = stat
    mean, std = mean * col.scale, std * col.scale
    if col.digits == 0:
        text = f"{mean:,.0f}"
        return text + (f" ± {std:,.0f}" if n > 1 else "")
    text = f"{mean:.{col.digits}f}"
    return text + (f" ± {std:.{col.digits}f}" if n > 1 else "")


def _primary(groups: list[Group]) -> str | None:
    return pick_metric([r for g in groups for r in g.finished], TEST_METRICS)


def _sorted(groups: list[Group]) -> list[Group]:
    key = _primary(groups)

    def order(g: Group) -> tuple:
        s = g.stat(key) if key else None
        if s is None:
            return (1, 0.0, g.label)
        return (0, s[0] if _lower_is_better(key) else -s[0], g.label)

    return sorted(groups, key=order)


def _rows(groups: list[Group], cols: list[Column]) -> list[list[str]]:
    rows = []
    best: dict[str, float] = {}
    for c in cols:
        if c.key in TEST_METRICS or c.key in ("test/elbo", "test/ess"):
            vals = [s[0] for g in groups if (s := g.stat(c.key))]
            if vals:
                best[c.key] = min(vals) if _lower_is_better(c.key) else max(vals)
    for g in groups:
        cells = [g.label, f"{len(g.finished)}/{len(g.runs)}"]
        for c in cols:
            s = g.stat(c.key)
            text = format_stat(s, c)
            if s and c.key in best and math.isclose(s[0], best[c.key]) and len(groups) > 1:
                text = f"**{text}**"
            cells.append(text)
        rows.append(cells)
    return rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda t: str(t).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


_INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\*([^*\s](?:[^*]*[^*\s])?)\*")


def inline_html(text: str) -> str:
    """The inline Markdown the report's prose uses (`` `code` ``, ``**bold**``, ``*emphasis*``)
    as escaped HTML, so the HTML page shows formatting, not asterisks."""
    out, last = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[last:m.start()]))
        code, bold, em = m.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<b>{inline_html(bold)}</b>")
        else:
            out.append(f"<em>{html.escape(em)}</em>")
        last = m.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def _html_table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    def cell(text: str) -> str:
        t = html.escape(str(text))
        if t.startswith("**") and t.endswith("**"):
            return f"<b>{t[2:-2]}</b>"
        return t

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _img(path: Path, alt: str, width: str = "100%") -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" style="max-width:{width}" src="data:image/png;base64,{data}">'


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _final_plot(run: Run) -> Path | None:
    for p in run.plots:
        if p.name == "density_final.png":
            return p
    return run.plots[-1] if run.plots else None


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
table.grid td,table.grid th{text-align:center;vertical-align:top}table.grid img{width:100%;min-width:300px;max-width:540px}
table.cfg td{text-align:left;font-family:monospace;font-size:.95em}
.note{color:#555;font-size:.88em;max-width:70em}.fail{color:#b00}
code{background:#f5f5f5;padding:0 .2em}
"""


def _unfinished_and_evaluations(runs: list[Run], runs_dir: Path, md: list[str], hb: list[str]
                                ) -> tuple[list[str], list[str]]:
    """Sections for runs still running or stopped early (resumable), failed runs, and the
    evaluations (``cnf test`` / ``validate`` on other data or checkpoints) of each run."""
    from cnf.report.runs import UNFINISHED_STATUSES, load_evaluations

    stopped = [r for r in runs if r.status in UNFINISHED_STATUSES]
    if stopped:
        note = ("Running, interrupted (Ctrl-C / SIGTERM, last.ckpt saved at that step) or "
                "unfinished (marked running but no process holds it: killed). Not in the "
                "results above; continue one with the command shown.")
        header = ["run", "model", "dataset", "status", "steps", "resume"]
        rows = [[r.name, r.label, r.data, r.status, str(r.summary.get("steps", "—")),
                 f"cnf fit --resume {r.path}"] for r in stopped]
        md += ["## Unfinished and interrupted runs", "", note, "", _md_table(header, rows), ""]
        hb += ["<h2>Unfinished and interrupted runs</h2>", f'<p class="note">{html.escape(note)}</p>',
               _html_table(header, rows)]
    failed = [r for r in runs if r.status != "finished" and r.status not in UNFINISHED_STATUSES]
    if failed:
        header = ["run", "model", "dataset", "seed", "status", "error"]
        rows = [[r.name, r.label, r.data, str(r.seed), r.status, (r.error or "")[:700]] for r in failed]
        md += ["## Runs that did not finish", "", _md_table(header, rows), ""]
        hb += ['<h2 class="fail">Runs that did not finish</h2>', _html_table(header, rows)]
    evals = load_evaluations(runs_dir)
    if evals:
        note = ("Evaluations kept apart from the training record (`cnf test` / `cnf validate`, "
                "in `<run>/evals/`); an untrained model is labelled so.")
        header = ["evaluation", "of run", "model", "checkpoint", "data", "stage", "metrics"]
        rows = []
        for ev in evals:
            s = ev.summary
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in sorted(s.get("metrics", {}).items())
                                if isinstance(v, (int, float)) and not k.startswith("time/"))
            rows.append([ev.name, Path(ev.of_run).name if ev.of_run else "—",
                         str(s.get("model", "—")), ev.label, str(s.get("data", "—")),
                         str(s.get("stage", "—")), metrics])
        md += ["## Evaluations", "", note, "", _md_table(header, rows), ""]
        hb += ["<h2>Evaluations</h2>", f'<p class="note">{html.escape(note)}</p>', _html_table(header, rows)]
    return md, hb


def write_report(runs_dir: str | Path, out: str | Path, *, title: str | None = None,
                 description: str = "") -> dict[str, Path]:
    """Write ``out/report.md``, ``out/report.html`` and ``out/figures/`` from the runs under
    ``runs_dir``. Returns the paths (``markdown``, ``html``, ``figures``).

    Raises:
        cnf.errors.DataError: ``runs_dir`` is missing or holds no run.
    """
    runs_dir, out = Path(runs_dir), Path(out)
    runs = load_runs(runs_dir)
    groups = group_runs(runs)
    datasets = list(dict.fromkeys(g.data for g in groups))
    labels = list(dict.fromkeys(g.label for g in groups))
    title = title or f"cnf comparison: {runs_dir}"
    fig_dir = out / "figures"
    if fig_dir.exists():
        shutil.rmtree(fig_dir)
    fig_dir.mkdir(parents=True)

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    n_fin = sum(r.status == "finished" for r in runs)
    envs = [r.summary.get("environment", {}) for r in runs if r.summary.get("environment")]
    env_line = ""
    if envs:
        e = envs[0]
        loads = [x.get("load_avg_1m") for x in envs if x.get("load_avg_1m") is not None]
        env_line = (f"torch {e.get('torch')}, device {e.get('device')}, {e.get('threads')} "
                    f"thread(s), world size {e.get('world_size')}, host {e.get('host')}"
                    + (f"; 1-min load average at the end of the runs {min(loads)}–{max(loads)}"
                       if loads else ""))
    md: list[str] = [f"# {title}", ""]
    hb: list[str] = [f"<h1>{html.escape(title)}</h1>"]
    intro = (f"{description + '. ' if description else ''}{len(runs)} runs "
             f"({n_fin} finished) of {len(labels)} models on {len(datasets)} dataset(s), read "
             f"from `{runs_dir}` on {now}.")
    md += [intro, ""] + ([f"Machine: {env_line}.", ""] if env_line else [])
    hb += [f"<p>{inline_html(intro)}</p>"] + ([f'<p class="note">Machine: {inline_html(env_line)}.</p>'] if env_line else [])

    # -- tables ----------------------------------------------------------------------
    md += ["## Results", "", _LEGEND, ""]
    hb += ["<h2>Results</h2>", f'<p class="note">{inline_html(_LEGEND)}</p>']
    for data in datasets:
        dgroups = _sorted([g for g in groups if g.data == data and g.finished])
        if not dgroups:
            continue
        cols = table_columns(dgroups)
        header = ["model", "seeds"] + [c.header for c in cols]
        rows = _rows(dgroups, cols)
        md += [f"### {data}", "", _md_table(header, rows), ""]
        hb += [f"<h3>{html.escape(data)}</h3>",
               f'<div style="overflow-x:auto">{_html_table(header, rows)}</div>']

    md, hb = _unfinished_and_evaluations(runs, runs_dir, md, hb)

    # -- figures ---------------------------------------------------------------------
    curves = learning_curves(groups, fig_dir / "learning_curves.png", "learning curves")
    if curves:
        md += ["## Learning curves", "", "![learning curves](figures/learning_curves.png)", ""]
        hb += ["<h2>Learning curves</h2>", _img(curves, "learning curves")]
    cost = cost_quality(groups, fig_dir / "quality_vs_cost.png", "quality against cost")
    if cost:
        note = "One point per model: test metric against the median training-step time."
        md += ["## Quality against cost", "", note, "", "![quality against cost](figures/quality_vs_cost.png)", ""]
        hb += ["<h2>Quality against cost</h2>", f'<p class="note">{inline_html(note)}</p>', _img(cost, "quality against cost")]

    # density plots: rows models, columns datasets (first finished seed of each)
    cells: dict[tuple[str, str], Path] = {}
    for g in groups:
        for r in sorted(g.finished, key=lambda r: (r.seed is None, r.seed)):
            plot = _final_plot(r)
            if plot is not None:
                dst = fig_dir / "runs" / f"{_slug(r.name)}.png"
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(plot, dst)
                cells[(g.label, g.data)] = dst
                break
    if cells:
        note = ("Each cell: data histogram | learned density | model samples, from the first "
                "finished seed at the end of training.")
        md += ["## Densities and samples", "", note, ""]
        hb += ["<h2>Densities and samples</h2>", f'<p class="note">{inline_html(note)}</p>']
        header = ["model"] + datasets
        md_rows, h_rows = [], []
        for label in labels:
            if not any((label, d) in cells for d in datasets):
                continue
            md_rows.append([label] + [f"![{label} on {d}](figures/runs/{cells[(label, d)].name})"
                                      if (label, d) in cells else "—" for d in datasets])
            h_rows.append(f"<tr><td>{html.escape(label)}</td>" + "".join(
                f"<td>{_img(cells[(label, d)], f'{label} on {d}')}</td>" if (label, d) in cells
                else "<td>—</td>" for d in datasets) + "</tr>")
        md += [_md_table(header, md_rows), ""]
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        hb += [f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{"".join(h_rows)}</tbody></table>']

    # -- configuration ---------------------------------------------------------------
    keys, table = config_differences(runs)
    md += ["## Configuration differences", ""]
    hb += ["<h2>Configuration differences</h2>"]
    if keys:
        note = ("Resolved config keys whose values differ between runs (seed, run name and "
                "logger settings left out; `a | b`: differs between this model's runs, e.g. "
                "per dataset). Everything else is identical across runs.")
        header = ["key"] + list(table)
        rows = [[k] + [table[label].get(k, "—") for label in table] for k in keys]
        md += [note, "", _md_table(header, rows), ""]
        hb += [f'<p class="note">{inline_html(note)}</p>',
               f'<div style="overflow-x:auto">{_html_table(header, rows, "cfg")}</div>']
    else:
        md += ["All runs share one configuration (apart from seeds and names).", ""]
        hb += ["<p>All runs share one configuration (apart from seeds and names).</p>"]

    # -- run index -------------------------------------------------------------------
    primary = _primary(groups) or "test/nll"
    header = ["run", "model", "dataset", "seed", "status", "steps", primary, "wall (s)", "folder"]
    rows = []
    for r in runs:
        v = r.metric(primary)
        rows.append([r.name, r.label, r.data, str(r.seed), r.status,
                     str(r.summary.get("steps", "—")), f"{v:.4f}" if v is not None else "—",
                     f"{r.summary['wall_time_s']:.1f}" if r.summary.get("wall_time_s") else "—",
                     str(r.path)])
    md += ["## Runs", "", _md_table(header, rows), ""]
    hb += ["<h2>Runs</h2>", _html_table(header, rows)]

    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text("\n".join(md))
    page = (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}'
            f"</title><style>{_CSS}</style></head><body>{''.join(hb)}"
            f'<p class="note">Written by <code>cnf report</code> from local run files.</p>'
            "</body></html>")
    html_path.write_text(page)
    return {"markdown": md_path, "html": html_path, "figures": fig_dir}
