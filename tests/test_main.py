"""The `cnf` dispatcher (cnf/__main__.py): light start-up, every subcommand listed, dispatch."""

import os
import re
import subprocess
import sys

import pytest

from cnf.__main__ import LIGHTNING_SUBCOMMANDS, SUBCOMMANDS, main
from tests.conftest import REPO

_PROBE = """
import sys
from cnf.__main__ import main
try:
    main({argv!r})
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "lightning", "lightning.pytorch", "matplotlib", "wandb")
               if m in sys.modules)
print("\\nHEAVY", ",".join(heavy) or "-", "EXIT", code)
"""


def _probe(argv: list[str]) -> tuple[str, str, int]:
    """Run the dispatcher in a fresh interpreter; returns (output, heavy modules, status)."""
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(argv=argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    out, _, tail = proc.stdout.rpartition("\nHEAVY ")
    heavy, _, code = tail.strip().partition(" EXIT ")
    return out + proc.stderr, heavy, int(code)


@pytest.mark.parametrize("argv", [["--help"], ["report", "--help"], ["compare", "--help"],
                                  ["evaluate", "--help"]])
def test_help_does_not_import_torch_or_lightning(argv):
    out, heavy, code = _probe(argv)
    assert code == 0
    assert heavy == "-", f"`cnf {' '.join(argv)}` imported {heavy}"
    assert "usage: cnf" in out


def test_top_level_help_lists_every_subcommand():
    out, _, _ = _probe(["--help"])
    for name in [*LIGHTNING_SUBCOMMANDS, *SUBCOMMANDS]:
        assert f"\n  {name} " in out
    assert set(LIGHTNING_SUBCOMMANDS) == {"fit", "validate", "test", "predict"}
    assert set(SUBCOMMANDS) == {"compare", "report", "evaluate"}


def test_console_script_is_the_dispatcher():
    text = (REPO / "pyproject.toml").read_text()
    scripts = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    assert re.findall(r'^cnf\s*=\s*"([^"]+)"', scripts, re.M) == ["cnf.__main__:main"]


def test_no_arguments_prints_usage_and_fails(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2 and "usage: cnf" in capsys.readouterr().err


def test_own_subcommand_errors_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["report", str(tmp_path / "missing")])
    assert exc.value.code == 2
    assert "cnf report: error: runs folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["compare", str(tmp_path / "nope.yaml")])
    assert exc.value.code == 2 and "suite file" in capsys.readouterr().err


def test_lightning_subcommands_go_to_cnf_cli(monkeypatch):
    import cnf.cli

    seen = []
    monkeypatch.setattr(cnf.cli, "main", lambda args=None: seen.append(args))
    main(["fit", "--config", "x.yaml"])
    main(["--config", "x.yaml", "fit"])  # anything not ours goes to LightningCLI unchanged
    assert seen == [["fit", "--config", "x.yaml"], ["--config", "x.yaml", "fit"]]
