"""`cnf` start-up: wall time of `cnf --help`, `cnf report --help`, `cnf compare --help`,
`cnf evaluate --help` beside `python -c "import lightning"` and `import torch`.

Every command is a fresh interpreter; the commands are interleaved (one of each per round) so
background load hits them alike. Prints the median per command and its ratio to
`import lightning`, plus the load average before and after.

Usage:
    python experiments/bench/bench_startup.py              # 5 rounds
    python experiments/bench/bench_startup.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time


def _load() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


COMMANDS = {
    "cnf --help": ["-m", "cnf", "--help"],
    "cnf report --help": ["-m", "cnf", "report", "--help"],
    "cnf compare --help": ["-m", "cnf", "compare", "--help"],
    "cnf evaluate --help": ["-m", "cnf", "evaluate", "--help"],
    "import lightning": ["-c", "import lightning"],
    "import torch": ["-c", "import torch"],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    before = _load()
    for _ in range(args.rounds):
        for name, cmd in COMMANDS.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *cmd], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - t0)
    ref = statistics.median(times["import lightning"])
    print(f"{'command':22s} {'median s':>9s} {'min s':>7s} {'/ import lightning':>19s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:22s} {med:9.2f} {min(ts):7.2f} {med / ref:19.3f}")
    print(f"rounds {args.rounds}; load average before {before}, after {_load()}; "
          f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
