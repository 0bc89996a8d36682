"""The ``cnf`` command (console script and ``python -m cnf``): a light dispatcher.

``cnf --help``, ``cnf compare``, ``cnf report`` and ``cnf evaluate --help`` start without
importing torch or Lightning; the Lightning subcommands (``fit``, ``validate``, ``test``,
``predict``) import :mod:`cnf.cli` only when they run. Whatever is not one of our own
subcommands goes to :func:`cnf.cli.main` unchanged.
"""

from __future__ import annotations

import importlib
import os
import sys

__all__ = ["main", "SUBCOMMANDS", "LIGHTNING_SUBCOMMANDS"]

# Lightning's subcommands (LightningCLI in cnf.cli): name -> help
LIGHTNING_SUBCOMMANDS: dict[str, str] = {
    "fit": "train a model: cnf fit --config configs/experiment/toy_realnvp.yaml",
    "validate": "validate a checkpoint (--ckpt_path) on the validation set",
    "test": "test a checkpoint (--ckpt_path) on the test set",
    "predict": "per-example log-likelihoods of a checkpoint (--ckpt_path)",
}

# subcommands of our own: name -> (module with main(argv) -> int, help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "compare": ("cnf.compare", "run an experiment suite, then write its report"),
    "report": ("cnf.report", "write a comparison report from finished runs"),
    "evaluate": ("cnf.evaluate", "sample, interpolate, anomaly scores, inpaint, exact NLL of a run"),
}


def _usage() -> str:
    lines = ["usage: cnf <subcommand> [options]   (cnf <subcommand> --help for its options)",
             "", "Continuous normalizing flows and the baselines to compare them with.", "",
             "training (Lightning; configs in configs/experiment/):"]
    lines += [f"  {name:10s} {text}" for name, text in LIGHTNING_SUBCOMMANDS.items()]
    lines += ["", "suites, reports, evaluation:"]
    lines += [f"  {name:10s} {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "options:", "  -h, --help  show this message", "  --version   print the version",
              "", "Errors a user can cause end with `cnf: error: ...` and exit status 2; set "
              "CNF_DEBUG=1 for the traceback."]
    return "\n".join(lines)


def _own(name: str, argv: list[str]) -> int:
    """Run one of our subcommands; user errors become ``cnf NAME: error:`` and exit 2."""
    from cnf.errors import CNFError

    module = importlib.import_module(SUBCOMMANDS[name][0])
    try:
        status = module.main(argv)
    except KeyboardInterrupt:
        return 130
    except CNFError as exc:
        if os.environ.get("CNF_DEBUG"):
            raise
        print(f"cnf {name}: error: {exc}", file=sys.stderr)
        return 2
    return status if isinstance(status, int) else 0


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``cnf``; exits with the subcommand's status."""
    from_command_line = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(_usage(), file=sys.stderr)
        sys.exit(2)
    if argv[0] in ("-h", "--help"):
        print(_usage())
        sys.exit(0)
    if argv[0] == "--version":
        from cnf import __version__

        print(f"cnf {__version__}")
        sys.exit(0)
    if argv[0] in SUBCOMMANDS:
        sys.exit(_own(argv[0], argv[1:]))
    from cnf.cli import main as lightning_main  # torch + Lightning: only now

    # from the command line, LightningCLI reads sys.argv itself (as when it was the entry point)
    lightning_main(None if from_command_line else argv)


if __name__ == "__main__":
    main()
