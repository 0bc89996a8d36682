"""The comparison as a W&B Report (``cnf report --wandb``).

:func:`build_spec` turns local runs into a plain description of the report — runset filter,
panels, markdown — with no W&B import, so it is testable offline. :func:`publish` maps that
description onto ``wandb_workspaces.reports.v2`` (an optional extra: ``pip install
wandb-workspaces``) and saves it; that needs an API key and a reachable server, and
:func:`can_publish` says why not when either is missing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cnf.report.figures import EVAL_METRICS, TEST_METRICS, TRAIN_METRICS, pick_metric
from cnf.report.runs import Run, group_runs

__all__ = ["build_spec", "can_publish", "publish"]


def build_spec(runs: list[Run], *, project: str = "cnf", entity: str | None = None,
               title: str = "cnf comparison", description: str = "") -> dict[str, Any]:
    """A JSON-able description of the W&B Report for ``runs``.

    One panel grid per W&B group found in the runs' configs (``run.group``, default the
    experiment); each grid filters its runset to that group and holds the learning curves
    (against step and against relative time), bar charts of the test metrics and NFE, and a
    run comparer showing config differences. A markdown block carries the local table.
    """
    groups: dict[str, list[Run]] = {}
    for r in runs:
        opts = r.config.get("run") or {}
        group = opts.get("group") or opts.get("experiment") or r.path.parent.name
        groups.setdefault(str(group), []).append(r)
    blocks: list[dict[str, Any]] = []
    if description:
        blocks.append({"type": "markdown", "text": description})
    for group, members in groups.items():
        train_key = pick_metric(members, TRAIN_METRICS)
        eval_key = pick_metric(members, EVAL_METRICS)
        test_key = pick_metric(members, TEST_METRICS)
        panels: list[dict[str, Any]] = []
        for key in (train_key, eval_key):
            if key:
                panels.append({"type": "line", "title": f"{key} vs step", "x": "Step", "y": [key]})
                panels.append({"type": "line", "title": f"{key} vs wall time",
                               "x": "Relative Time (Wall)", "y": [key]})
        bars = [k for k in (test_key, "test/nfe_forward") if k and any(
            r.metric(k) is not None for r in members)]
        nfe = [k for k in ("train/nfe_forward", "train/nfe_backward")
               if any(k in r.history for r in members)]
        if nfe:
            panels.append({"type": "line", "title": "NFE per training step", "x": "Step", "y": nfe})
        for key in bars:
            panels.append({"type": "bar", "title": key, "metrics": [key]})
        panels.append({"type": "run_comparer", "diff_only": True})
        models = sorted({g.label for g in group_runs(members)})
        datasets = sorted({r.data for r in members})
        blocks.append({"type": "markdown",
                       "text": f"### {group}\nModels: {', '.join(models)}; data: {', '.join(datasets)}."})
        blocks.append({"type": "panel_grid",
                       "runset": {"project": project, "entity": entity, "name": group,
                                  "filters": f"Metric('group') == '{group}'",
                                  "run_names": sorted(r.name for r in members)},
                       "panels": panels})
    return {"title": title, "project": project, "entity": entity,
            "description": description, "blocks": blocks}


def can_publish(env: dict[str, str] | None = None) -> tuple[bool, str]:
    """Whether a report can be saved: wandb-workspaces importable and an API key present.
    (Reachability is checked when saving, with a short timeout.)"""
    env = dict(os.environ) if env is None else env
    try:
        import wandb_workspaces.reports.v2  # noqa: F401
    except ImportError:
        return False, ("the W&B Reports API is not installed (pip install wandb-workspaces); "
                       "wrote the local report only")
    if env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False, f"WANDB_MODE={env['WANDB_MODE']}; wrote the local report only"
    netrc = Path.home() / ".netrc"
    if not env.get("WANDB_API_KEY") and not (netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")):
        return False, ("no W&B API key (run `wandb login` or set WANDB_API_KEY); wrote the "
                       "local report only. Sync offline runs first with `wandb sync runs/<suite>/*/wandb/offline-run-*`")
    return True, "ok"


def publish(spec: dict[str, Any]) -> str:  # pragma: no cover - needs a W&B server
    """Save ``spec`` as a W&B Report; returns its URL."""
    import wandb_workspaces.reports.v2 as wr

    blocks: list[Any] = []
    for b in spec["blocks"]:
        if b["type"] == "markdown":
            blocks.append(wr.MarkdownBlock(text=b["text"]))
            continue
        rs = b["runset"]
        panels: list[Any] = []
        for p in b["panels"]:
            if p["type"] == "line":
                panels.append(wr.LinePlot(title=p["title"], x=p["x"], y=p["y"]))
            elif p["type"] == "bar":
                panels.append(wr.BarPlot(title=p["title"], metrics=p["metrics"]))
            elif p["type"] == "run_comparer":
                panels.append(wr.RunComparer(diff_only=p["diff_only"]))
        blocks.append(wr.PanelGrid(
            runsets=[wr.Runset(entity=rs["entity"] or "", project=rs["project"], name=rs["name"],
                               filters=rs["filters"])],
            panels=panels))
    report = wr.Report(project=spec["project"], entity=spec["entity"] or "",
                       title=spec["title"], description=spec["description"], blocks=blocks)
    report.save()
    return str(report.url)
