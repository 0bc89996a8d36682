"""cnf/flows/__init__.py: every public class of every family is importable as cnf.flows.X."""

import importlib
import inspect
import subprocess
import sys

import cnf.flows as flows


def _public_classes():
    for module in flows.modules():
        mod = importlib.import_module(f"cnf.flows.{module}")
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name)
            if inspect.isclass(obj) and obj.__module__ == mod.__name__:
                yield module, name, obj


def test_every_public_class_is_reexported_once():
    seen = {}
    for module, name, obj in _public_classes():
        assert name not in seen, f"{name} is public in both {seen[name]} and {module}"
        seen[name] = module
        assert getattr(flows, name) is obj


def test_short_class_path_in_a_config(tmp_path):
    from jsonargparse import ArgumentParser

    from cnf.flows.base import Flow

    parser = ArgumentParser()
    parser.add_subclass_arguments(Flow, "flow")
    cfg = parser.parse_object({"flow": {"class_path": "cnf.flows.RealNVP",
                                        "init_args": {"dim": 2}}})
    assert type(parser.instantiate_classes(cfg).flow).__name__ == "RealNVP"


def test_one_flow_does_not_import_the_ode_machinery():
    code = ("import sys\nfrom cnf.flows import Planar\nPlanar(2)\n"
            "assert 'torchdiffeq' not in sys.modules and 'cnf.ode' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True)
