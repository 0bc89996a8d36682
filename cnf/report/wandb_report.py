"""The comparison as a W&B Report (``cnf report --wandb``).

Three steps, each usable alone:

- :func:`build_spec` turns local runs into a plain, JSON-able plan of the report (which
  datasets, which metrics, which runs), with no W&B import;
- :func:`build_report` turns that plan into real ``wandb_workspaces.reports.v2`` objects
  (the optional extra ``pip install "cnf[wandb]"``, installed by ``make install``): per
  suite group and dataset, a panel grid whose runset is filtered to the suite's W&B group
  and the dataset's tag, holding the primary metric against step and against wall time, a
  bar chart of the test metric, an NFE-against-test-metric scatter (flows that count NFE)
  and a run comparer;
- :func:`publish` saves the report. That is the one step that needs an API key and a
  reachable W&B server; :func:`can_publish` says why not when either is missing.

:func:`to_dict` / :func:`from_dict` give the report's serialized form (public fields,
class names as ``type``), which ``cnf report --wandb`` writes next to the local report as
``wandb_report.json`` whether or not it can save.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from cnf.report.figures import EVAL_METRICS, TEST_METRICS, TRAIN_METRICS, pick_metric
from cnf.report.runs import Run, group_runs

__all__ = ["build_spec", "build_report", "to_dict", "from_dict", "can_publish", "publish",
           "write_and_publish", "WALL_TIME"]

# W&B's x-axis names (wandb_workspaces.expr.FE_METRIC_NAME_MAP): step and wall-clock time
# since the run started
STEP = "Step"
WALL_TIME = "RelativeTime(Wall)"
NFE_METRICS = ("test/nfe_forward", "test/nfe", "train/nfe_forward")
_GRID_W, _PANEL_W, _PANEL_H = 24, 8, 6


def _group_of(run: Run) -> str:
    opts = run.config.get("run") or {}
    return str(opts.get("group") or opts.get("experiment") or run.path.parent.name)


def build_spec(runs: list[Run], *, project: str = "cnf", entity: str | None = None,
               title: str = "cnf comparison", description: str = "") -> dict[str, Any]:
    """A JSON-able plan of the W&B Report for ``runs``: one section per (W&B group, dataset).

    Each section names its runset filter (the W&B ``group`` the runs were logged under and the
    dataset, which every run carries as a tag), the primary metric (the first validation
    metric any run logged, else the training loss), the test metric, the NFE metric when
    some run counted NFE, and the models and run names it covers.
    """
    by_group: dict[str, list[Run]] = {}
    for r in runs:
        if not r.config:  # failed before its config was saved: it never reached W&B
            continue
        by_group.setdefault(_group_of(r), []).append(r)
    sections: list[dict[str, Any]] = []
    for group, members in by_group.items():
        datasets = list(dict.fromkeys(r.data for r in members))
        for data in datasets:
            rs = [r for r in members if r.data == data]
            primary = pick_metric(rs, EVAL_METRICS) or pick_metric(rs, TRAIN_METRICS)
            test = pick_metric(rs, TEST_METRICS)
            nfe = next((k for k in NFE_METRICS
                        if any(r.metric(k) is not None for r in rs)), None)
            sections.append({
                "group": group, "data": data, "primary": primary, "test": test, "nfe": nfe,
                "models": sorted({g.label for g in group_runs(rs)}),
                "run_names": sorted(r.name for r in rs),
            })
    return {"title": title, "project": project, "entity": entity,
            "description": description, "sections": sections}


def _layout(wr: Any, i: int) -> Any:
    per_row = _GRID_W // _PANEL_W
    return wr.Layout(x=(i % per_row) * _PANEL_W, y=(i // per_row) * _PANEL_H,
                     w=_PANEL_W, h=_PANEL_H)


def build_report(spec: dict[str, Any]) -> Any:
    """``wandb_workspaces.reports.v2.Report`` for a :func:`build_spec` plan. Offline: builds
    objects only (an empty entity stays empty until :func:`publish` resolves it).

    Raises:
        ImportError: wandb-workspaces is not installed (``pip install "cnf[wandb]"``).
    """
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    blocks: list[Any] = []
    if spec.get("description"):
        blocks.append(wr.P(spec["description"]))
    for s in spec["sections"]:
        blocks.append(wr.H2(f"{s['data']} ({s['group']})"))
        blocks.append(wr.MarkdownBlock(text=(
            f"Models: {', '.join(s['models'])}. Runs of W&B group `{s['group']}` tagged "
            f"`{s['data']}`. Lower is better for every metric shown.")))
        panels: list[Any] = []
        if s["primary"]:
            panels.append(wr.LinePlot(title=f"{s['primary']} vs step", x=STEP,
                                      y=[s["primary"]], title_x="training step"))
            panels.append(wr.LinePlot(title=f"{s['primary']} vs wall time", x=WALL_TIME,
                                      y=[s["primary"]], title_x="wall time (s)"))
        if s["test"]:
            panels.append(wr.BarPlot(title=f"{s['test']} per model", metrics=[s["test"]],
                                     orientation="h", max_bars_to_show=max(len(s["run_names"]), 1)))
        if s["nfe"] and s["test"]:
            panels.append(wr.ScatterPlot(title=f"{s['nfe']} vs {s['test']}",
                                         x=wr.SummaryMetric(s["nfe"]),
                                         y=wr.SummaryMetric(s["test"])))
        panels.append(wr.RunComparer(diff_only="split"))
        for i, p in enumerate(panels):
            p.layout = _layout(wr, i)
        runset = wr.Runset(
            entity=spec.get("entity") or "", project=spec["project"],
            name=f"{s['group']} / {s['data']}",
            filters=expr.And(expr.Metric("Group") == s["group"], expr.Tags().isin([s["data"]])))
        blocks.append(wr.PanelGrid(runsets=[runset], panels=panels))
    return wr.Report(project=spec["project"], entity=spec.get("entity") or "",
                     title=spec["title"][:128], description=spec.get("description", ""),
                     blocks=blocks)


def to_dict(obj: Any) -> Any:
    """The serialized form of a report object tree: public init fields of every
    wandb-workspaces dataclass, with its class name under ``type``; ``None`` left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {"type": type(obj).__name__}
        for f in dataclasses.fields(obj):
            if f.init and not f.name.startswith("_"):
                value = getattr(obj, f.name)
                if value is not None:
                    out[f.name] = to_dict(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def from_dict(data: Any) -> Any:
    """Rebuild the objects :func:`to_dict` serialized (needs wandb-workspaces)."""
    import wandb_workspaces.reports.v2 as wr

    if isinstance(data, list):
        return [from_dict(v) for v in data]
    if isinstance(data, dict) and "type" in data:
        cls = getattr(wr, data["type"])
        return cls(**{k: from_dict(v) for k, v in data.items() if k != "type"})
    if isinstance(data, dict):
        return {k: from_dict(v) for k, v in data.items()}
    return data


def can_publish(env: dict[str, str] | None = None) -> tuple[bool, str]:
    """Whether a report can be saved: wandb-workspaces importable and an API key present.
    (Whether the server is reachable is only known when saving.)"""
    env = dict(os.environ) if env is None else env
    try:
        import wandb_workspaces.reports.v2  # noqa: F401
    except ImportError:
        return False, ('the W&B Reports API is not installed (pip install "cnf[wandb]", '
                       "i.e. wandb-workspaces)")
    if env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False, f"WANDB_MODE={env['WANDB_MODE']}"
    netrc = Path.home() / ".netrc"
    if not env.get("WANDB_API_KEY") and not (
            netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")):
        return False, ("no W&B API key (run `wandb login` or set WANDB_API_KEY; sync the "
                       "offline runs first with `wandb sync runs/<suite>/*/wandb/offline-run-*`)")
    return True, "ok"


def publish(report: Any) -> str:  # pragma: no cover - needs a W&B key and server
    """Save ``report`` to the W&B server and return its URL. An empty entity becomes the
    logged-in user's default entity. Not exercised offline: it is the one network call."""
    import wandb

    if not report.entity:
        entity = wandb.Api().default_entity
        report.entity = entity
        for block in report.blocks:
            for rs in getattr(block, "runsets", []):
                rs.entity = entity
    report.save()
    return str(report.url)


def write_and_publish(runs: list[Run], out: Path, *, project: str, entity: str | None,
                      title: str) -> Path | None:
    """``cnf report --wandb``: build the report, write ``out/wandb_report.json`` and save it
    when a key and server are available; prints what happened. Returns the JSON path
    (``None`` when wandb-workspaces is missing)."""
    spec = build_spec(runs, project=project, entity=entity, title=title)
    try:
        report = build_report(spec)
    except ImportError:
        print('cnf report: W&B report not built: wandb-workspaces is not installed '
              '(pip install "cnf[wandb]"); the local report is complete')
        return None
    path = Path(out) / "wandb_report.json"
    path.write_text(json.dumps(to_dict(report), indent=1))
    ok, why = can_publish()
    if not ok:
        print(f"cnf report: W&B report built ({path}) but not saved: {why}. Saving needs "
              "a key and a W&B server; the local report is complete")
        return path
    try:
        url = publish(report)
    except Exception as exc:  # network or server errors: the local report stands
        print(f"cnf report: W&B report built ({path}) but not saved "
              f"({type(exc).__name__}: {exc}); the local report is complete")
        return path
    print(f"cnf report: W&B report {url}")
    return path
