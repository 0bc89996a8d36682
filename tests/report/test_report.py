"""`cnf report`: reading runs, aggregating seeds, Markdown/HTML/PNG output, the W&B spec."""

import base64
import json
import re
import shutil

import pytest

from cnf.errors import DataError
from cnf.report import load_runs, main, write_report
from cnf.report.render import Column, format_stat
from cnf.report.runs import config_differences, flatten, group_runs, mean_std
from cnf.report.wandb_report import build_spec


def test_flatten_drops_init_args_and_names_classes():
    cfg = {"model": {"class_path": "a.b.DensityEstimation",
                     "init_args": {"density": {"class_path": "x.RealNVP",
                                               "init_args": {"num_layers": 8}}}},
           "trainer": {"callbacks": [{"class_path": "p.Bar", "init_args": {"r": 5}}]}}
    assert flatten(cfg) == {"model": "DensityEstimation", "model.density": "RealNVP",
                            "model.density.num_layers": 8, "trainer.callbacks[0]": "Bar",
                            "trainer.callbacks[0].r": 5}


def test_stats_and_formatting():
    assert mean_std([1.0, 3.0]) == (2.0, pytest.approx(2 ** 0.5), 2)
    assert mean_std([4.0]) == (4.0, 0.0, 1)
    assert format_stat((1.23456, 0.01, 3), Column("k", "k", 3)) == "1.235 ± 0.010"
    assert format_stat((1.23456, 0.0, 1), Column("k", "k", 3)) == "1.235"
    assert format_stat((0.0123, 0.001, 2), Column("k", "k", 1, 1000.0)) == "12.3 ± 1.0"
    assert format_stat((35344, 0, 1), Column("k", "k", 0)) == "35,344"
    assert format_stat(None, Column("k", "k")) == "—"


def test_no_runs_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_runs(tmp_path / "nothing")
    with pytest.raises(DataError, match="no runs under"):
        load_runs(tmp_path)


@pytest.mark.slow
def test_report_on_real_runs(suite_runs, tmp_path, capsys):
    work, _, _ = suite_runs
    runs_dir = tmp_path / "runs"
    shutil.copytree(work / "runs" / "suite", runs_dir)
    # a second seed of toy_realnvp: the real run's files with another seed and NLL
    src = runs_dir / "toy_realnvp-8gaussians-s0"
    dst = runs_dir / "toy_realnvp-8gaussians-s1"
    shutil.copytree(src, dst)
    (dst / "config.yaml").write_text((dst / "config.yaml").read_text().replace(
        "seed_everything: 0", "seed_everything: 1"))
    s0 = json.loads((src / "summary.json").read_text())
    s1 = dict(s0, metrics=dict(s0["metrics"], **{"test/nll": s0["metrics"]["test/nll"] + 0.2}))
    (dst / "summary.json").write_text(json.dumps(s1))
    state = json.loads((runs_dir / "suite.json").read_text())
    first = next(m for m in state["members"] if m["run_name"] == src.name)
    state["members"].append(dict(first, seed=1, run_name=dst.name, run_dir=str(dst)))
    (runs_dir / "suite.json").write_text(json.dumps(state))

    runs = load_runs(runs_dir)
    labels = {(r.label, r.seed, r.status) for r in runs}
    assert {("toy_realnvp", 0, "finished"), ("toy_realnvp", 1, "finished"),
            ("small", 0, "finished"), ("broken", 0, "failed")} <= labels
    groups = {g.label: g for g in group_runs(runs)}
    mean, std, n = groups["toy_realnvp"].stat("test/nll")
    assert n == 2 and mean == pytest.approx(s0["metrics"]["test/nll"] + 0.1)
    assert std == pytest.approx(0.2 / 2 ** 0.5)
    keys, table = config_differences(runs)
    assert "model.density.flow.num_layers" in keys
    assert table["toy_realnvp"]["model.density.flow.num_layers"] == "8"
    assert table["small"]["model.density.flow.num_layers"] == "2"
    assert not any(k.startswith(("run.", "seed")) for k in keys)

    out = tmp_path / "report"
    assert main([str(runs_dir), "--out", str(out), "--wandb"]) == 0
    printed = capsys.readouterr().out
    assert "W&B report built" in printed and "not saved" in printed  # no key / server here
    assert (out / "wandb_report.json").exists()
    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    # the table: both models, seeds aggregated, the failure listed with its cause
    row = next(ln for ln in md.splitlines() if ln.startswith("| toy_realnvp |"))
    assert "| 2/2 |" in row and " ± " in row
    assert "test NLL (nats)" in md and "peak RSS (MB)" in md and "train step (ms, median)" in md
    assert "Runs that did not finish" in md and "NoSuchFlow" in md
    assert "model.density.flow.num_layers" in md
    # figures exist, are PNGs, and the HTML embeds every image it shows
    for name in ("learning_curves.png", "quality_vs_cost.png"):
        assert (out / "figures" / name).read_bytes()[:4] == b"\x89PNG"
        assert f"figures/{name}" in md
    assert len(list((out / "figures" / "runs").glob("*.png"))) == 2  # one per model
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 4
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    # no external reference: base64 image data can spell "http" by chance, so drop it first
    body = re.sub(r"data:image/png;base64,[^\"]+", "", page.split("<body>")[1])
    assert "src=\"figures" not in page and "http" not in body
    # prose: Markdown in report.md, formatted (not raw asterisks) in report.html
    assert "*seeds*" in md and "*seeds*" not in page and "<em>seeds</em>" in page

    # the W&B report plan from real runs: one section for the suite's group and dataset
    spec = build_spec(runs, project="cnf", title="t")
    (section,) = spec["sections"]
    assert (section["group"], section["data"]) == ("suite", "8gaussians")
    assert "toy_realnvp-8gaussians-s1" in section["run_names"]
    assert section["primary"] == "val/nll" and section["test"] == "test/nll"


@pytest.mark.slow
def test_write_report_on_plain_experiment_folder(suite_runs, tmp_path):
    """Runs not made by a suite are labelled by their experiment folder."""
    work, _, _ = suite_runs
    plain = tmp_path / "runs" / "toy_realnvp"
    shutil.copytree(work / "runs" / "suite" / "toy_realnvp-8gaussians-s0", plain / "20260101-000000-000")
    paths = write_report(tmp_path / "runs", tmp_path / "rep")
    assert "| toy_realnvp | 1/1 |" in paths["markdown"].read_text()


@pytest.mark.parametrize("lo, hi", [(3.1, 3.4), (2.9, 3.1), (0.4, 40.0), (0.05, 9000.0), (7.0, 7.0)])
def test_log_axis_always_has_labelled_ticks(lo, hi):
    """A narrow log range (all models' step times within one decade) had no tick labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnf.report.figures import log_ticks

    fig, ax = plt.subplots()
    ax.plot([lo, hi], [1.0, 2.0], "o")
    ticks = log_ticks(ax, lo, hi)
    fig.canvas.draw()
    left, right = ax.get_xlim()
    shown = [(t.get_position()[0], t.get_text()) for t in ax.get_xticklabels()
             if left <= t.get_position()[0] <= right and t.get_text()]
    plt.close(fig)
    assert 2 <= len(shown) <= 8 and ticks == [x for x, _ in shown]
    assert left <= lo and right >= hi  # the data stay inside the axis
    assert all(float(text) == pytest.approx(x, rel=1e-6) for x, text in shown)


def test_html_prose_renders_inline_markdown():
    from cnf.report.render import inline_html

    assert inline_html("*NFE* in `a | b` **best** 2 * 3 <x>") == (
        "<em>NFE</em> in <code>a | b</code> <b>best</b> 2 * 3 &lt;x&gt;")
