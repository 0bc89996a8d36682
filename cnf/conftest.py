"""Doctests of the package (collected by ``make test`` through ``--doctest-modules``): every
example sees ``torch``, the public flows (``RealNVP``, ``Planar``, ...) and the public names
of ``cnf.ode`` (``ODENet``, ``SolverConfig``, ...), with a fixed seed."""

import pytest
import torch

collect_ignore_glob = ["__main__.py", "*/__main__.py"]


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    import cnf.flows
    import cnf.ode

    doctest_namespace["torch"] = torch
    for package in (cnf.ode, cnf.flows):
        for name in package.__all__:
            doctest_namespace[name] = getattr(package, name)
    torch.manual_seed(0)
