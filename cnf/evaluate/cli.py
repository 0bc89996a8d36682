"""``cnf evaluate COMMAND RUN [options]``: the command line of :mod:`cnf.evaluate`.

This module imports neither torch nor Lightning, so ``cnf evaluate --help`` answers at once;
a subcommand's module is imported only when that subcommand runs (or shows its help).

Adding a subcommand is one entry in :data:`COMMANDS`: ``"name": ("module", "one-line help")``
(or ``"module:attribute"``). The module (or attribute) provides

- ``add_arguments(parser)``: its options, each with a ``help=`` text (import torch inside
  functions, not at the top, to keep its ``--help`` fast);
- ``run(args) -> dict``: the work; a JSON-serializable result.

Every subcommand also gets the common arguments ``RUN``, ``--checkpoint``, ``--seed`` and
``--trust-checkpoint``. The result is printed as JSON and saved to
``RUN/eval/<command>.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any

__all__ = ["COMMANDS", "build_parser", "main"]

# name -> (module[:attribute] with add_arguments(parser) and run(args) -> dict, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("cnf.evaluate.commands:sample",
               "samples at several temperatures (an image grid for image runs)"),
    "interpolate": ("cnf.evaluate.commands:interpolate",
                    "decode latent interpolations between test images (image runs)"),
    "anomaly": ("cnf.evaluate.commands:anomaly",
                "tell corrupted test images from clean ones by likelihood: AUROC, p-values"),
    "inpaint": ("cnf.evaluate.commands:inpaint",
                "fill a masked region of test images by MAP under the model (image runs)"),
    "exact": ("cnf.evaluate.commands:exact",
              "test NLL with exact log-determinants where the dimension allows"),
    "nfe-curve": ("cnf.nfe_curve", "NLL and sample energy distance against NFE (rk4 steps, "
                  "dopri5 tolerances) of a CNF run"),
    "attributes": ("cnf.attributes", "class-mean latents and a grid moving test images along their difference (digits)"),
}

DESCRIPTION = """\
Evaluate a finished run (a directory made by `cnf fit`, runs/<experiment>/<run name>/): the
model is rebuilt from the run's resolved config and its checkpoint is loaded weights-only.
Results are printed as JSON and saved, with any images, under RUN/eval/.
For the library functions behind these commands see `cnf.evaluate` (Python)."""

EPILOG = "`cnf evaluate COMMAND --help` shows the options of one command."


def _resolve(target: str) -> Any:
    module, _, attribute = target.partition(":")
    obj = importlib.import_module(module)
    return getattr(obj, attribute) if attribute else obj


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN", help="run directory made by `cnf fit` "
                   "(runs/<experiment>/<run name>/)")
    p.add_argument("--checkpoint", default="best",
                   help="checkpoint name in the run's checkpoints folder; falls back to 'last' "
                        "(default: best)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of sampling, probes and random choices (default: 0)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="unpickle the checkpoint in full, which can run code stored in it; "
                        "only for files from a source you trust (default: weights only)")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``cnf evaluate`` parser; only ``command``'s module is imported (for its options)."""
    ap = argparse.ArgumentParser(prog="cnf evaluate", description=DESCRIPTION, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND",
                            title="commands")
    for name, (target, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if name == command:
            _common(p)
            _resolve(target).add_arguments(p)
    return ap


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run ``cnf evaluate`` on ``argv``; returns the result dict (also printed and saved)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    result: dict[str, Any] = {"command": args.command, "run": str(args.run)}
    result.update(_resolve(COMMANDS[args.command][0]).run(args))

    from cnf.evaluate.loading import output_dir

    out = output_dir(args.run)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2)
    (out / f"{args.command}.json").write_text(text)
    print(text)
    return result
