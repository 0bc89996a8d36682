"""Every configs/experiment/vi_*.yaml and vae_*.yaml resolves: referenced files exist, every
``class_path`` imports, and every ``init_args`` key is a parameter of that class. (A full
``--print_config`` parse costs ~1 s per config; this check costs milliseconds.)"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from cnf.configs import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "experiment").glob("vi_*.yaml")) + sorted(
    (ROOT / "configs" / "experiment").glob("vae_*.yaml"))


def _resolve(node, base: Path, where: str):
    if isinstance(node, str) and node.endswith(".yaml"):
        path = (base / node).resolve()
        assert path.exists(), f"{where}: {node} not found"
        return _resolve(yaml.safe_load(path.read_text()), path.parent, str(path))
    if isinstance(node, dict):
        node = {k: _resolve(v, base, f"{where}.{k}") for k, v in node.items()}
        if "class_path" in node:
            module, _, name = node["class_path"].rpartition(".")
            cls = getattr(importlib.import_module(module), name)
            params = inspect.signature(cls).parameters
            var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
            for key in node.get("init_args") or {}:
                assert var_kw or key in params, f"{where}: {cls.__name__} has no argument {key!r}"
        return node
    if isinstance(node, list):
        return [_resolve(v, base, where) for v in node]
    return node


@pytest.mark.parametrize("cfg", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_resolves(cfg):
    tree = _resolve(load_file(cfg), cfg.parent, cfg.name)
    assert cfg.read_text().startswith("# "), "the first line is the make help text"
    assert tree["run"]["experiment"] == cfg.stem
    assert tree["run"]["monitor"] in ("val/free_energy", "val/neg_elbo")
