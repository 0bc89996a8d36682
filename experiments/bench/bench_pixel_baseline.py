"""Independent-pixel baseline bits/dim of the image sets (the bar every image model must beat).

Each pixel gets its own histogram over the data's levels, fitted on the training split. Under
uniform dequantization the baseline's density is constant on every bin, so its dequantized
bits/dim equal its discrete ones. Rows: the training-set entropy (alpha = 0, the baseline's
best case) and held-out cross-entropies with add-alpha smoothing.

    python experiments/bench/bench_pixel_baseline.py [--data digits mnist cifar10] [--root DIR]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from cnf.data.images import LEVELS, load, pixel_histogram_bpd
from cnf.errors import DataError


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["digits"])
    ap.add_argument("--root", default=None)
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}; torch threads: "
          f"{torch.get_num_threads()}\n")
    print("| data | levels | D | train entropy (bits/dim) | val, alpha=1 | test, alpha=1 "
          "| test, alpha=0.1 | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.data:
        t0 = time.perf_counter()
        try:
            train, val, test = load(name, args.root)
        except DataError as exc:
            print(f"| {name} | - | - | missing files: {exc} | | | | |")
            continue
        k = LEVELS[name]
        row = [pixel_histogram_bpd(train, k), pixel_histogram_bpd(train, k, val, alpha=1.0),
               pixel_histogram_bpd(train, k, test, alpha=1.0),
               pixel_histogram_bpd(train, k, test, alpha=0.1)]
        d = int(train[0].numel())
        print(f"| {name} | {k} | {d} | " + " | ".join(f"{v:.4f}" for v in row)
              + f" | {time.perf_counter() - t0:.2f} |")


if __name__ == "__main__":
    main()
