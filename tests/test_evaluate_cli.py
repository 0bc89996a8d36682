"""cnf evaluate's command line: light to import, every option documented, one-line registry."""

import subprocess
import sys

import pytest

from cnf.evaluate import cli


def test_help_and_parsers_import_neither_torch_nor_lightning():
    code = ("import sys\n"
            "from cnf.evaluate.cli import COMMANDS, build_parser\n"
            "build_parser().format_help()\n"
            "for name in COMMANDS:\n"
            "    build_parser(name).parse_args([name, 'RUN'])\n"
            "heavy = [m for m in ('torch', 'lightning') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_option_has_help(name):
    parser = cli.build_parser(name)
    sub = next(a for a in parser._actions if a.dest == "command").choices[name]
    for action in sub._actions:
        assert action.help, f"`cnf evaluate {name}` option {action.option_strings} has no help"


def test_help_names_the_cnf_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert out.startswith("usage: cnf evaluate") and "weights-only" in out
    for name in cli.COMMANDS:
        assert name in out


def test_a_registered_module_becomes_a_subcommand(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_eval.py").write_text(
        "def add_arguments(p):\n"
        "    p.add_argument('--k', type=int, default=2, help='k')\n"
        "def run(args):\n"
        "    return {'k2': args.k ** 2}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.COMMANDS, "square", ("my_eval", "square k"))
    res = cli.main(["square", str(tmp_path / "run"), "--k", "3"])
    assert res == {"command": "square", "run": str(tmp_path / "run"), "k2": 9}
    assert (tmp_path / "run" / "eval" / "square.json").is_file()
