"""Latent attribute arithmetic (Glow, Kingma & Dhariwal 2018, §5.2): the mean latent of each
class of a labelled image set, and images moved along the difference of two class means.

With ``z = f(x)`` the latent of an image (taken at its bin centres) and ``m_c`` the mean of
the latents of the training images of class ``c``, the attribute direction from class ``a``
to class ``b`` is ``d = m_b − m_a``, and the grid row of a test image ``x`` of class ``a``
decodes ``f⁻¹(f(x) + α d)`` for ``α`` in ``alphas`` (0 is the image itself, 1 adds the whole
difference). Works for any image density whose ``inverse`` exists (RealNVP, Glow, Flow++,
FFJORD multiscale, Residual Flows).

That the class means carry the attribute is measured by the nearest-class-mean classifier
in latent space on held-out images: its accuracy against chance (1 / number of classes).

Labels: digits (scikit-learn's 8×8 set) carry them; :func:`digit_labels` recovers the label
of each image of a split by its pixels (a lookup, so it does not depend on how the split was
drawn).

Command line::

    cnf evaluate attributes RUN --from 3 --to 8 [--n 8] [--alphas 0 0.25 0.5 0.75 1 1.25]
"""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["digit_labels", "class_means", "nearest_mean_accuracy", "attribute_grid",
           "add_arguments", "run"]


def digit_labels(images: Any) -> Any:
    """Labels ``[N]`` (int64) of 8×8 digits images ``[N, 1, 8, 8]`` (levels 0..16), looked up
    by pixels in scikit-learn's digits; raises :class:`cnf.errors.DataError` for an image
    that is not one of them."""
    import numpy as np
    import torch
    from sklearn.datasets import load_digits

    from cnf.errors import DataError

    ds = load_digits()
    table: dict[bytes, int] = {}
    for img, y in zip(ds.images.astype(np.uint8), ds.target):
        table.setdefault(img.tobytes(), int(y))
    arr = images.reshape(len(images), 8, 8).cpu().numpy().astype(np.uint8)
    out = []
    for i, img in enumerate(arr):
        label = table.get(img.tobytes())
        if label is None:
            raise DataError(f"image {i} is not one of scikit-learn's 8x8 digits; attribute "
                            f"arithmetic from the command line needs the digits data set")
        out.append(label)
    return torch.tensor(out, dtype=torch.long)


def _latents(density: Any, x: Any, batch_size: int = 500) -> Any:
    import torch

    from cnf.evaluate.library import encode

    return torch.cat([encode(density, b).flatten(1) for b in x.split(batch_size)])


def class_means(density: Any, x: Any, y: Any) -> tuple[Any, Any]:
    """``(classes [C], means [C, D])``: the mean flattened latent of each class of ``y``."""
    import torch

    z = _latents(density, x)
    classes = torch.unique(y)
    return classes, torch.stack([z[y == c].mean(0) for c in classes])


def nearest_mean_accuracy(density: Any, classes: Any, means: Any, x: Any, y: Any) -> float:
    """Accuracy of assigning each image of ``x`` to the class whose mean latent is nearest."""
    z = _latents(density, x)
    pred = classes[(z[:, None, :] - means[None]).pow(2).sum(-1).argmin(1)]
    return float((pred == y).float().mean())


def attribute_grid(density: Any, x: Any, direction: Any, alphas: list[float]) -> Any:
    """Images ``[N · len(alphas), *x.shape[1:]]``: row ``i`` decodes ``f(x_i) + α d`` for each α."""
    import torch

    from cnf.evaluate.library import decode

    z = _latents(density, x)
    rows = []
    for zi in z:
        zs = torch.stack([zi + a * direction for a in alphas])
        rows.append(decode(density, zs.view(len(alphas), *density.event_shape)))
    return torch.cat(rows)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--from", dest="source", type=int, default=3,
                   help="class whose test images are moved (default: 3)")
    p.add_argument("--to", dest="dest", type=int, default=8,
                   help="class whose mean latent they move towards (default: 8)")
    p.add_argument("--n", type=int, default=8, help="test images of the source class (default: 8)")
    p.add_argument("--alphas", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1.0, 1.25],
                   metavar="A", help="steps along m_to − m_from (default: 0 0.25 0.5 0.75 1 1.25)")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The ``attributes`` subcommand: class means from the training set, nearest-mean accuracy
    on the test set, and the grid ``eval/attributes_<from>_to_<to>.png``."""
    import torch

    from cnf.dequantization import DequantizedDensity
    from cnf.errors import ConfigError
    from cnf.evaluate.loading import load_run, output_dir
    from cnf.lightning.images import save_image_grid

    torch.manual_seed(args.seed)
    module, dm = load_run(args.run, args.checkpoint, trust=args.trust_checkpoint)
    density = module.density
    if not isinstance(density, DequantizedDensity):
        raise ConfigError("`cnf evaluate attributes` is for image runs (a DequantizedDensity)")
    dm.setup("fit")
    dm.setup("test")
    train, test = dm.train_set, dm.test_set
    y_train, y_test = digit_labels(train), digit_labels(test)
    classes, means = class_means(density, train, y_train)
    known = set(classes.tolist())
    if args.source not in known or args.dest not in known:
        raise ConfigError(f"--from {args.source} / --to {args.dest}: classes must be among "
                          f"{sorted(known)}")
    acc = nearest_mean_accuracy(density, classes, means, test, y_test)
    idx = {c: i for i, c in enumerate(classes.tolist())}
    direction = means[idx[args.dest]] - means[idx[args.source]]
    x = test[y_test == args.source][: args.n]
    grid = attribute_grid(density, x, direction, list(args.alphas))
    path = output_dir(args.run) / f"attributes_{args.source}_to_{args.dest}.png"
    title = f"{args.source} → {args.dest}: α = " + " ".join(f"{a:g}" for a in args.alphas)
    image = str(save_image_grid(grid, density.levels, path, nrow=len(args.alphas), title=title))
    return {"image": image, "nearest_mean_accuracy": acc, "chance": 1 / len(classes),
            "classes": len(classes), "from": args.source, "to": args.dest,
            "alphas": list(args.alphas), "latent_distance": float(direction.norm())}
