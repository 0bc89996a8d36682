"""cnf/configs.py: experiment files with `extends` and dotted overrides."""

import pytest

from cnf.configs import load_file
from cnf.errors import ConfigError


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_override_reaches_into_a_referenced_file(tmp_path):
    _write(tmp_path / "model" / "m.yaml",
           "class_path: A\ninit_args:\n  dim: 2\n  sub: inner.yaml\n  keep: 1\n")
    _write(tmp_path / "model" / "inner.yaml", "class_path: B\n")
    exp = _write(tmp_path / "experiment" / "e.yaml",
                 "model: ../model/m.yaml\nmodel.init_args.dim: 6\nrun:\n  experiment: e\n")
    cfg = load_file(exp)
    assert cfg["model"]["init_args"]["dim"] == 6 and cfg["model"]["init_args"]["keep"] == 1
    # a reference inside the inlined file now points at the same file from anywhere
    assert cfg["model"]["init_args"]["sub"] == str((tmp_path / "model" / "inner.yaml").resolve())


def test_extends_merges_mappings_and_replaces_values(tmp_path):
    _write(tmp_path / "a.yaml", "x: 1\nrun:\n  experiment: a\n  monitor: m\nlst: [1, 2]\n")
    b = _write(tmp_path / "b.yaml", "extends: a.yaml\nrun:\n  experiment: b\nlst: [3]\n")
    assert load_file(b) == {"x": 1, "run": {"experiment": "b", "monitor": "m"}, "lst": [3]}


def test_plain_files_load_unchanged(tmp_path):
    p = _write(tmp_path / "p.yaml", "model: ../x.yaml\na:\n  b: 1\n")
    assert load_file(p) == {"model": "../x.yaml", "a": {"b": 1}}


def test_errors_name_the_problem(tmp_path):
    loop = _write(tmp_path / "loop.yaml", "extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_file(loop)
    missing = _write(tmp_path / "missing.yaml", "extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="names no file"):
        load_file(missing)
    scalar = _write(tmp_path / "scalar.yaml", "a: 3\na.b: 1\n")
    with pytest.raises(ConfigError, match="not a mapping"):
        load_file(scalar)
