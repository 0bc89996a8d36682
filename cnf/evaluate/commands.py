"""The built-in ``cnf evaluate`` subcommands: each an ``add_arguments(parser)`` and a
``run(args) -> dict`` (see :mod:`cnf.evaluate.cli`). Arguments are declared without importing
torch, so ``--help`` stays fast; the work imports what it needs."""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple


class Command(NamedTuple):
    """A subcommand: its options, and what it does with the parsed arguments."""

    add_arguments: Any
    run: Any


def _load(args: argparse.Namespace, image_only: bool = False) -> tuple[Any, Any, Any]:
    """``(density, datamodule, test set)`` of ``args.run``; seeds torch with ``args.seed``."""
    import torch

    from cnf.dequantization import DequantizedDensity
    from cnf.errors import ConfigError
    from cnf.evaluate.loading import load_run

    torch.manual_seed(args.seed)
    module, dm = load_run(args.run, args.checkpoint, trust=args.trust_checkpoint)
    density = module.density
    if image_only and not isinstance(density, DequantizedDensity):
        raise ConfigError(f"`cnf evaluate {args.command}` is for image runs; for vectors use "
                          f"the functions of cnf.evaluate (library)")
    dm.setup("test")
    return density, dm, dm.test_set


def _save_grid(images: Any, density: Any, name: str, args: argparse.Namespace, nrow: int,
               **kw: Any) -> str:
    from cnf.evaluate.loading import output_dir
    from cnf.lightning.images import save_image_grid

    return str(save_image_grid(images, density.levels, output_dir(args.run) / name,
                               nrow=nrow, **kw))


# -- sample -----------------------------------------------------------------------------------
def _sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=10, help="samples per temperature (default: 10)")
    p.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 0.8, 0.6, 0.4],
                   metavar="T", help="base temperatures T, z ~ N(0, T² I) (default: 1 0.8 0.6 0.4)")


def _sample(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from cnf.dequantization import DequantizedDensity
    from cnf.evaluate.library import sample

    density, _, _ = _load(args)
    rows = [sample(density, args.n, t) for t in args.temperatures]
    if isinstance(density, DequantizedDensity):
        return {"image": _save_grid(torch.cat(rows), density, "samples.png", args, args.n,
                                    row_labels=[f"T={t:g}" for t in args.temperatures])}
    return {"samples": {f"T={t:g}": r.tolist() for t, r in zip(args.temperatures, rows)}}


# -- interpolate ------------------------------------------------------------------------------
def _interpolate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", type=int, default=4,
                   help="random pairs of test images to interpolate between (default: 4)")
    p.add_argument("--steps", type=int, default=8,
                   help="points on each latent segment, ends included (default: 8)")


def _interpolate(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from cnf.evaluate.library import interpolate

    density, _, test = _load(args, image_only=True)
    g = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(len(test), generator=g)[: 2 * args.pairs].view(args.pairs, 2)
    rows = [interpolate(density, test[i].float(), test[j].float(), args.steps)
            for i, j in idx.tolist()]
    return {"image": _save_grid(torch.cat(rows), density, "interpolation.png", args,
                                args.steps)}


# -- anomaly (image corruptions) --------------------------------------------------------------
def _anomaly_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corruption", nargs="+", default=["noise", "patch", "shuffle"],
                   choices=["noise", "patch", "shuffle"],
                   help="corruptions to tell from clean test images (default: all three)")
    p.add_argument("--amount", type=float, default=0.2,
                   help="fraction of pixels (noise) or of the image area (patch) corrupted "
                        "(default: 0.2)")


def _anomaly(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from cnf.evaluate.library import anomaly_demo, corrupt

    density, dm, test = _load(args, image_only=True)
    dm.setup("validate")
    results = [anomaly_demo(density, test, dm.val_set, kind, args.amount, args.seed)
               for kind in args.corruption]
    g = torch.Generator().manual_seed(args.seed)
    show = test[torch.randperm(len(test), generator=g)[:10]]
    grid = torch.cat([show] + [corrupt(show, density.levels, k, args.amount, args.seed)
                               for k in args.corruption])
    return {"results": results,
            "image": _save_grid(grid, density, "corruptions.png", args, 10,
                                row_labels=["clean"] + list(args.corruption))}


# -- inpaint ----------------------------------------------------------------------------------
_MASKS = ("bottom", "right", "center")


def _inpaint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=8, help="test images to inpaint (default: 8)")
    p.add_argument("--mask", default="bottom", choices=_MASKS,
                   help="region to fill: bottom or right half, or the center (default: bottom)")
    p.add_argument("--steps", type=int, default=500,
                   help="Adam steps of the MAP search (default: 500)")


def _mask(kind: str, shape: Any) -> Any:
    import torch

    h, w = shape[-2:]
    m = torch.zeros(shape, dtype=torch.bool)
    if kind == "bottom":
        m[..., h // 2:, :] = True
    elif kind == "right":
        m[..., :, w // 2:] = True
    else:
        m[..., h // 4: h - h // 4, w // 4: w - w // 4] = True
    return m


def _inpaint(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from cnf.evaluate.library import inpaint

    density, _, test = _load(args, image_only=True)
    x = test[: args.n]
    mask = _mask(args.mask, x.shape)
    filled = inpaint(density, x, mask, steps=args.steps, seed=args.seed)
    masked = torch.where(mask, torch.zeros_like(x), x)
    image = _save_grid(torch.cat([x, masked, filled.to(x.dtype)]), density,
                       f"inpaint_{args.mask}.png", args, args.n,
                       row_labels=["original", "masked", "MAP"])
    err = (filled.float() - x.float())[mask].abs().mean()
    return {"image": image, "mean_abs_error_levels": float(err)}


# -- exact ------------------------------------------------------------------------------------
def _exact_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--probes", type=int, default=100,
                   help="probe draws averaged when the log-det stays stochastic (default: 100)")
    p.add_argument("--max-exact-dim", type=int, default=64,
                   help="largest dimension D at which stochastic log-dets switch to their exact "
                        "mode (default: 64)")


def _exact(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import asdict

    from cnf.evaluate.library import exact_evaluate

    density, _, test = _load(args)
    return asdict(exact_evaluate(density, test, probes=args.probes,
                                 max_exact_dim=args.max_exact_dim))


sample = Command(_sample_arguments, _sample)
interpolate = Command(_interpolate_arguments, _interpolate)
anomaly = Command(_anomaly_arguments, _anomaly)
inpaint = Command(_inpaint_arguments, _inpaint)
exact = Command(_exact_arguments, _exact)
