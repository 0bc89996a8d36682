"""The README's "Your own data" example, run as written (fewer training steps)."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex

import numpy as np
import pytest

from cnf.cli import run
from cnf.evaluate import main as evaluate_main
from tests.helpers import REPO


def _block(marker: str) -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(rf"<!-- {marker} -->\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"README lost the {marker} block"
    return m.group(1)


@pytest.mark.slow
def test_readme_your_own_data_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    (tmp_path / "configs").symlink_to(REPO / "configs")
    # the test writes the files the example uses (the README's own snippet makes the same)
    rng = np.random.default_rng(0)
    c = rng.normal(size=3000)
    x = np.c_[2 * c, -c, c ** 2] + 0.3 * rng.normal(size=(3000, 3))
    np.savetxt("background.csv", np.c_[x, c], delimiter=",", header="x1,x2,x3,c", comments="")
    new = np.c_[x[:200], c[:200], np.zeros(200)]
    new[:20, :3] += rng.normal(size=(20, 3)) * 3
    new[:20, 4] = 1
    np.savetxt("new.csv", new, delimiter=",", header="x1,x2,x3,c,is_anomaly", comments="")
    assert "background.csv" in _block("files-example-python")

    commands = [shlex.split(line) for line in
                _block("files-example-shell").replace("\\\n", " ").splitlines() if line.strip()]
    assert [cmd[:2] for cmd in commands] == [["cnf", "fit"], ["cnf", "predict"],
                                             ["cnf", "evaluate"], ["cnf", "fit"]]
    quick = ["--trainer.max_steps", "150", "--trainer.val_check_interval", "50",
             "--run.progress", "none"]
    fit = run(commands[0][1:] + quick)
    assert fit.model.density.flow.dim == 4  # x1, x2, x3, c: taken from the file
    run(commands[1][1:] + ["--run.progress", "none"])
    if importlib.util.find_spec("cnf.lightning.predictions") is not None:  # the run-lifecycle writer
        written = sorted((tmp_path / "runs/file_nsf/demo").rglob("predictions/*.csv"))
        assert written, "cnf predict wrote no predictions file"
        rows = np.genfromtxt(written[-1], delimiter=",", names=True)
        np.testing.assert_array_equal(rows["row"], np.arange(200))  # every row of new.csv
    result = evaluate_main(commands[2][2:])["results"]
    assert result["n_anomalous"] == 20 and result["n_normal"] == 180
    assert result["auroc"] > 0.9, result
    cond = run(commands[3][1:] + quick)
    assert (cond.model.density.flow.dim, cond.model.density.context_dim) == (3, 1)
    summary = json.loads((tmp_path / "runs/file_cond_nsf/demo/summary.json").read_text())
    assert "test/nll_original_units" in summary["metrics"]
