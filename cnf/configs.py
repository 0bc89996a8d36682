"""Experiment configs that hold only what differs: ``extends`` and dotted overrides.

An experiment file composes ``configs/{model,data,trainer}/*.yaml`` by path, as
LightningCLI does, and may also

- ``extends: other.yaml`` (or a list): start from another config file (relative to this one)
  and apply this file's keys on top (mappings merge key by key, other values replace);
- override single values with dotted keys, the same keys as on the command line::

      model: ../model/maf.yaml
      model.init_args.density.init_args.flow.init_args.dim: 6

  A dotted key that reaches into a value given as a path (``model: ../model/maf.yaml``)
  reads that file first.

:func:`load` is the YAML loader of the ``cnf`` command's parser (``parser_mode="cnf"``,
registered by :func:`register`); :func:`load_file` expands an experiment file for tools
and tests. A file without ``extends`` or dotted keys loads exactly as plain YAML.

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "base.yaml"), "w") as f:
    ...     _ = f.write("model: {class_path: M, init_args: {dim: 2, hidden: 64}}\\n")
    >>> with open(os.path.join(d, "exp.yaml"), "w") as f:
    ...     _ = f.write("extends: base.yaml\\nmodel.init_args.dim: 6\\n")
    >>> load_file(os.path.join(d, "exp.yaml"))
    {'model': {'class_path': 'M', 'init_args': {'dim': 6, 'hidden': 64}}}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from cnf.errors import ConfigError

__all__ = ["MODE", "load", "load_file", "register", "EXTENDS"]

MODE = "cnf"
EXTENDS = "extends"
_SUFFIXES = (".yaml", ".yml")


def _is_file_ref(value: Any, base: Path) -> bool:
    return isinstance(value, str) and value.endswith(_SUFFIXES) and (base / value).is_file()


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc


def _absolute_refs(node: Any, base: Path) -> Any:
    """``node`` with every relative ``*.yaml`` reference made absolute (it moves to a file
    in another folder)."""
    if _is_file_ref(node, base):
        return str((base / node).resolve())
    if isinstance(node, dict):
        return {k: _absolute_refs(v, base) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute_refs(v, base) for v in node]
    return node


def _inline(value: Any, base: Path) -> Any:
    """A file reference replaced by the file's content (its own references made absolute)."""
    if _is_file_ref(value, base):
        path = (base / value).resolve()
        return _absolute_refs(_read(path), path.parent)
    return value


def _merge(into: Any, over: Any, base: Path) -> Any:
    if isinstance(over, dict):
        into = _inline(into, base)
        if isinstance(into, dict):
            out = dict(into)
            for k, v in over.items():
                out[k] = _merge(out.get(k), v, base) if k in out else v
            return out
    return over


def _set(tree: dict, dotted: str, value: Any, base: Path, where: str) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        child = _inline(node.get(key), base)
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: override {dotted!r}: {'.'.join(keys[:i + 1])} is "
                              f"{child!r}, not a mapping")
        node[key] = child = dict(child)
        node = child
    node[keys[-1]] = value


def _expand(data: Any, base: Path, where: str, seen: tuple[Path, ...] = ()) -> Any:
    if not isinstance(data, dict) or not (EXTENDS in data or any("." in str(k) for k in data)):
        return data
    data = dict(data)
    parents = data.pop(EXTENDS, None) or []
    tree: dict = {}
    for parent in [parents] if isinstance(parents, str) else list(parents):
        path = (base / parent).resolve()
        if path in seen:
            raise ConfigError(f"{where}: `extends` loops back to {path}")
        if not path.is_file():
            raise ConfigError(f"{where}: `extends: {parent}` names no file (looked for {path})")
        loaded = _expand(_read(path), path.parent, str(path), seen + (path,))
        tree = _merge(tree, _absolute_refs(loaded, path.parent), base)
    for key, value in data.items():
        if "." not in str(key):
            tree[key] = _merge(tree.get(key), value, base) if key in tree else value
    for key, value in data.items():
        if "." in str(key):
            _set(tree, str(key), value, base, where)
    return tree


def load(text: str, path: str | os.PathLike = "") -> Any:
    """YAML ``text`` with ``extends`` and dotted overrides applied, relative references
    resolved against the working directory (the parser runs in the config file's folder)."""
    return _expand(yaml.safe_load(text), Path.cwd(), str(path) or "config")


def load_file(path: str | os.PathLike) -> Any:
    """The experiment file at ``path`` with ``extends`` and dotted overrides applied."""
    path = Path(path).resolve()
    return _expand(_read(path), path.parent, str(path), (path,))


def register() -> str:
    """Make :func:`load` the loader of parser mode :data:`MODE` (``"cnf"``); returns it."""
    from jsonargparse import set_loader

    set_loader(MODE, load, exceptions=(yaml.YAMLError, ConfigError))
    return MODE
