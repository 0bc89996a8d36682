"""The tabular and digits experiment configs name real classes with valid arguments."""

import contextlib
import importlib
import inspect
import io
from pathlib import Path

import pytest
import yaml

from cnf.cli import run
from cnf.configs import load_file

ROOT = Path(__file__).resolve().parents[1]
SETS = ("wine", "breast_cancer", "power", "gas", "hepmass", "miniboone", "bsds300")
CONFIGS = sorted(p for p in (ROOT / "configs" / "experiment").glob("*.yaml")
                 if p.stem.startswith(SETS + ("digits_", "mnist_", "cifar10_")))


def _resolve(node, base: Path):
    """Follow ``key: ../file.yaml`` includes the way the CLI does."""
    if isinstance(node, str) and node.endswith(".yaml"):
        path = (base / node).resolve()
        return _resolve(yaml.safe_load(path.read_text()), path.parent)
    if isinstance(node, dict):
        return {k: _resolve(v, base) for k, v in node.items()}
    return node


def _check_class_nodes(node, where=""):
    """Every ``class_path`` imports and every ``init_args`` key is a parameter of it."""
    if isinstance(node, list):
        for i, v in enumerate(node):
            _check_class_nodes(v, f"{where}[{i}]")
        return
    if not isinstance(node, dict):
        return
    if "class_path" in node:
        module, name = node["class_path"].rsplit(".", 1)
        cls = getattr(importlib.import_module(module), name)
        params = inspect.signature(cls).parameters
        accepts_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
        for key in node.get("init_args") or {}:
            assert accepts_kwargs or key in params, f"{where}: {cls.__name__} has no {key!r}"
    for k, v in node.items():
        _check_class_nodes(v, f"{where}.{k}")


def test_every_set_has_the_four_models():
    names = {p.stem for p in CONFIGS}
    for s in SETS:
        assert {f"{s}_{m}" for m in ("realnvp", "maf", "nsf", "ffjord")} <= names, s
    assert {"digits_realnvp", "digits_glow", "digits_realnvp_vardeq", "digits_resflow", "mnist_realnvp",
            "mnist_glow", "cifar10_realnvp", "cifar10_glow"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_config_names_valid_classes(config):
    assert config.read_text().startswith("# ")  # the help text of `make help`
    cfg = _resolve(load_file(config), config.parent)
    _check_class_nodes(cfg["model"], "model")
    _check_class_nodes(cfg["data"], "data")


@pytest.mark.parametrize("name", ["power_ffjord", "hepmass_nsf", "digits_realnvp_vardeq",
                                  "cifar10_glow"])
def test_config_parses_in_the_cli(name):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        run(["fit", "--config", str(ROOT / "configs" / "experiment" / f"{name}.yaml"),
             "--print_config"])
    assert info.value.code in (0, None)
    assert yaml.safe_load(out.getvalue())["model"]["init_args"]["density"]
