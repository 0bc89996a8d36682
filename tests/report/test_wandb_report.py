"""`cnf report --wandb`: the report plan, real wandb_workspaces.reports.v2 objects and their
serialized form, built offline. Saving (`publish`) needs a key and a W&B server and is the
one step not exercised here."""

import json
from pathlib import Path

import pytest

from cnf.report.runs import Run
from cnf.report.wandb_report import (
    WALL_TIME,
    build_report,
    build_spec,
    can_publish,
    from_dict,
    to_dict,
    write_and_publish,
)

wr = pytest.importorskip("wandb_workspaces.reports.v2")
expr = pytest.importorskip("wandb_workspaces.expr")


def _run(tmp: Path, label: str, data: str, seed: int, nll: float, nfe: float | None = None,
         group: str = "toy") -> Run:
    metrics = {"test/nll": nll}
    history = {"val/nll": [(10, nll + 1.0), (20, nll)], "train/loss": [(10, 3.0), (20, 2.0)]}
    if nfe is not None:
        metrics["test/nfe_forward"] = nfe
        history["train/nfe_forward"] = [(10, nfe), (20, nfe)]
    return Run(path=tmp / group / f"{label}-{data}-s{seed}", label=label, data=data, seed=seed,
               status="finished", summary={"metrics": metrics, "steps": 20},
               config={"run": {"group": group}, "seed_everything": seed}, history=history)


@pytest.fixture
def runs(tmp_path):
    return [_run(tmp_path, "realnvp", "8gaussians", 0, 2.9),
            _run(tmp_path, "realnvp", "8gaussians", 1, 2.95),
            _run(tmp_path, "ffjord", "8gaussians", 0, 2.8, nfe=26.0),
            _run(tmp_path, "realnvp", "2spirals", 0, 3.1)]


def test_spec_has_one_section_per_dataset_with_its_metrics(runs):
    spec = build_spec(runs, project="p", title="t")
    assert [(s["group"], s["data"]) for s in spec["sections"]] == [
        ("toy", "8gaussians"), ("toy", "2spirals")]
    gauss, spirals = spec["sections"]
    assert gauss["primary"] == "val/nll" and gauss["test"] == "test/nll"
    assert gauss["nfe"] == "test/nfe_forward" and spirals["nfe"] is None  # no CNF on 2spirals
    assert gauss["models"] == ["ffjord", "realnvp"]
    assert gauss["run_names"] == ["ffjord-8gaussians-s0", "realnvp-8gaussians-s0",
                                  "realnvp-8gaussians-s1"]
    assert json.loads(json.dumps(spec)) == spec


def test_report_objects_per_dataset(runs):
    report = build_report(build_spec(runs, project="p", entity="me", title="t",
                                     description="why"))
    assert isinstance(report, wr.Report) and (report.project, report.entity) == ("p", "me")
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == 2
    gauss, spirals = grids
    # the runset is filtered to the suite's W&B group and the dataset's tag, in a filter
    # string the library itself parses
    (rs,) = gauss.runsets
    assert "Group" in rs.filters and "'toy'" in rs.filters and "'8gaussians'" in rs.filters
    tree = expr.expr_to_filters(rs.filters)
    assert tree.op == "AND"
    assert [(f.key.name, f.op, f.value) for f in tree.filters] == [
        ("group", "=", "toy"), ("tags", "IN", ["8gaussians"])]
    kinds = [type(p).__name__ for p in gauss.panels]
    assert kinds == ["LinePlot", "LinePlot", "BarPlot", "ScatterPlot", "RunComparer"]
    step, wall, bar, scatter, _ = gauss.panels
    assert (step.x, step.y) == ("Step", ["val/nll"])
    assert (wall.x, wall.y) == (WALL_TIME, ["val/nll"])
    assert WALL_TIME in expr.FE_METRIC_NAME_MAP  # a W&B x-axis name, not free text
    assert bar.metrics == ["test/nll"] and bar.max_bars_to_show == 3
    assert scatter.x == wr.SummaryMetric("test/nfe_forward")
    assert scatter.y == wr.SummaryMetric("test/nll")
    # panels tile the 24-wide grid without overlapping
    cells = {(p.layout.x, p.layout.y) for p in gauss.panels}
    assert len(cells) == len(gauss.panels) and all(p.layout.x + p.layout.w <= 24 for p in gauss.panels)
    # 2spirals has no NFE: no scatter
    assert "ScatterPlot" not in [type(p).__name__ for p in spirals.panels]
    headings = [b.text for b in report.blocks if isinstance(b, wr.H2)]
    assert headings == ["8gaussians (toy)", "2spirals (toy)"]


def test_serialized_form_round_trips(runs):
    report = build_report(build_spec(runs, project="p", title="t"))
    data = to_dict(report)
    text = json.dumps(data)
    assert data["type"] == "Report" and data["entity"] == ""
    grid = next(b for b in data["blocks"] if b["type"] == "PanelGrid")
    assert [p["type"] for p in grid["panels"]][-1] == "RunComparer"
    assert grid["panels"][3]["x"] == {"type": "SummaryMetric", "name": "test/nfe_forward"}
    assert "_id" not in text  # private, generated fields are left out
    again = from_dict(json.loads(text))
    assert isinstance(again, wr.Report) and to_dict(again) == data


def test_write_and_publish_offline_writes_the_json_and_says_why(runs, tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    path = write_and_publish(runs, tmp_path, project="p", entity=None, title="t")
    printed = capsys.readouterr().out
    assert path == tmp_path / "wandb_report.json"
    assert "not saved: WANDB_MODE=disabled" in printed and "needs a key and a W&B server" in printed
    assert from_dict(json.loads(path.read_text())).title == "t"


def test_can_publish_says_why_not(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    ok, why = can_publish({})
    assert not ok and "no W&B API key" in why
    ok, why = can_publish({"WANDB_API_KEY": "x", "WANDB_MODE": "offline"})
    assert not ok and "WANDB_MODE=offline" in why
    assert can_publish({"WANDB_API_KEY": "x"}) == (True, "ok")
