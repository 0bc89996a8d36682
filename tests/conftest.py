import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

from pathlib import Path as _PathType  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


# -- parallel runs (`make test`: pytest-xdist for most tests, then a serial pass) ---------
# Tests that start several processes of their own (DDP), send signals, or share the
# `suite_runs` session fixture carry the `serial` mark: `make test` runs them after the
# parallel pass, in one process, so two of them never compete for cores or ports and
# `suite_runs` is built once. (xdist's `--dist loadgroup` would do this in one pass, but
# with pytest 9.2 it silently stops grouping: pytest-dev/pytest-xdist#1386.) Mark a new such
# test `@pytest.mark.serial`; DDP modules (`ddp` in the name), modules that import `signal`
# and tests using `suite_runs` are marked here.


def _is_serial(item) -> bool:
    if item.get_closest_marker("serial") is not None:
        return True
    if "suite_runs" in getattr(item, "fixturenames", ()):
        return True
    module = getattr(item, "module", None)
    if module is None:
        return False
    import signal as _signal

    return "ddp" in module.__name__.rsplit(".", 1)[-1] or any(
        v is _signal for v in vars(module).values())


def pytest_itemcollected(item):  # during collection, so `-m "not serial"` sees the mark
    if _is_serial(item) and item.get_closest_marker("serial") is None:
        item.add_marker(pytest.mark.serial)


# The serial pass (`--serial-pass`, set by the Makefile) imports only the test modules that can
# hold serial tests by the rules above -- a name with `ddp`, or the words `serial`, `signal` or
# `suite_runs` in the source -- instead of importing and collecting the whole tree again
# (≈9 s of CPU here) to keep a handful of tests; it is given `tests` as its path, so the
# package's doctests (never serial) are not collected either. Every collection without the option checks
# that no serial test sits in a module this filter would skip.
_SERIAL_WORDS = ("serial", "signal", "suite_runs")


def _may_hold_serial_tests(path: _PathType) -> bool:
    return "ddp" in path.stem or any(w in path.read_text(errors="ignore") for w in _SERIAL_WORDS)


def pytest_addoption(parser):
    parser.addoption("--serial-pass", action="store_true",
                     help="collect only the test modules that can hold `serial` tests "
                          "(make test's second pass)")


def pytest_ignore_collect(collection_path, config):
    if not config.getoption("--serial-pass", default=False):
        return None
    path = collection_path
    if path.suffix == ".py" and path.name.startswith("test_"):
        return not _may_hold_serial_tests(path)
    return None


def pytest_collection_modifyitems(config, items):
    if config.getoption("--serial-pass", default=False):
        return
    missed = sorted({str(item.path) for item in items if item.get_closest_marker("serial")
                     and not _may_hold_serial_tests(item.path)})
    if missed:
        raise pytest.UsageError(
            f"serial tests in {missed}, which `--serial-pass` would not collect: mark them "
            f"with `@pytest.mark.serial` in that module, or extend _may_hold_serial_tests")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


# -- finished runs for the compare / report tests (real `cnf fit` subprocesses) ----------
from pathlib import Path as _Path  # noqa: E402

REPO = _Path(__file__).resolve().parents[1]


def tiny_suite_files(tmp: _Path) -> _Path:
    """A suite of two real members (toy_realnvp and a 2-layer RealNVP) and one member whose
    config is broken, on a small 8gaussians, 30 steps. Returns the suite file."""
    cfg = tmp / "configs"
    cfg.mkdir(parents=True, exist_ok=True)
    model = (REPO / "configs/model/realnvp.yaml").read_text()
    model = model.replace("num_layers: 8", "num_layers: 2").replace("hidden: 64", "hidden: 32")
    (cfg / "tiny_model.yaml").write_text(model)
    (cfg / "suite_small.yaml").write_text(
        "# a 2-layer RealNVP\nseed_everything: 0\n"
        f"trainer: {REPO}/configs/trainer/default.yaml\nmodel: {cfg}/tiny_model.yaml\n"
        f"data: {REPO}/configs/data/8gaussians.yaml\n")
    (cfg / "suite_broken.yaml").write_text(
        "# broken on purpose\nseed_everything: 0\n"
        f"trainer: {REPO}/configs/trainer/default.yaml\n"
        "model:\n  class_path: cnf.lightning.DensityEstimation\n  init_args:\n"
        "    density:\n      class_path: cnf.flows.NoSuchFlow\n"
        f"data: {REPO}/configs/data/8gaussians.yaml\n")
    suite = tmp / "suite.yaml"
    suite.write_text(
        "# tiny suite for tests\nname: suite\n"
        f"members: [{REPO}/configs/experiment/toy_realnvp.yaml, {cfg}/suite_small.yaml, "
        f"{cfg}/suite_broken.yaml]\n"
        f"data: [{REPO}/configs/data/8gaussians.yaml]\n"
        "budget: {max_steps: 30, validations: 3}\nseeds: [0]\nwandb: disabled\n"
        "args: [--data.init_args.n_train, '4096', --data.init_args.n_val, '1000', "
        "--data.init_args.n_test, '2000']\n")
    return suite


@pytest.fixture(scope="session")
def suite_runs(tmp_path_factory):
    """Run the tiny suite once with `cnf compare` (3 subprocesses, ~25 s on an idle
    2-core machine) and return ``(workdir, exit status, printed output)``."""
    import contextlib
    import io

    from cnf.compare import main as compare_main

    work = tmp_path_factory.mktemp("compare")
    suite = tiny_suite_files(work)
    old_cwd, old_pp = os.getcwd(), os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO) + (os.pathsep + old_pp if old_pp else "")
    os.chdir(work)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            status = compare_main([str(suite), "--out", str(work / "report")])
    finally:
        os.chdir(old_cwd)
        if old_pp is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_pp
    return work, status, out.getvalue()
