"""Density distillation: sampling speed of the IAF student against its MAF teacher, and the
KL / ESS the student reached (from the distillation run's record).

The MAF teacher samples by inverting each autoregressive layer, D sequential network passes
per layer; the IAF student samples in one pass per layer. Timing is interleaved (teacher and
student alternate, ``--repeats`` times) so background load hits both alike; the table gives
medians and the load average.

Usage (after `cnf fit --config configs/experiment/toy_maf.yaml` and
`cnf fit --config configs/experiment/distill_maf_to_iaf.yaml`)::

    python experiments/bench/bench_distill.py [--teacher runs/toy_maf] \\
        [--student runs/distill_maf_to_iaf] [--n 100000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402


def _newest_finished(root: str):
    from cnf.rundir import RunDir, find_runs

    path = RunDir(root)
    if path.is_run:
        return path
    runs = [r for r in find_runs(root) if r.is_finished]
    if not runs:
        raise SystemExit(f"no finished run under {root}")
    return max(runs, key=lambda r: r.path.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--teacher", default="runs/toy_maf")
    ap.add_argument("--student", default="runs/distill_maf_to_iaf")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from cnf.evaluate.loading import load_run
    from cnf.vi.targets import DensityTarget

    teacher = DensityTarget(args.teacher).teacher
    student_run = _newest_finished(args.student)
    module, _ = load_run(student_run.path)
    student = module.density.eval()
    times: dict[str, list[float]] = {"teacher (MAF)": [], "student (IAF)": []}
    with torch.no_grad():
        for _ in range(args.repeats):
            for name, d in (("teacher (MAF)", teacher), ("student (IAF)", student)):
                t0 = time.perf_counter()
                d.sample(args.n)
                times[name].append(time.perf_counter() - t0)
    load = open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else "?"
    print(f"sampling {args.n} points, {args.repeats} interleaved repeats, 1 thread, load {load}")
    print("| model | median s | samples/s |")
    print("|---|---|---|")
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {args.n / v:,.0f} |")
    print(f"speed-up student/teacher: {med['teacher (MAF)'] / med['student (IAF)']:.2f}x")
    metrics = student_run.read_summary().get("metrics", {})
    print("student (test): KL(student || teacher) = {:.4f} nats, ESS = {:.3f}, log Z (IS) = "
          "{:.4f} (exact 0)".format(metrics.get("test/kl", float("nan")),
                                    metrics.get("test/ess", float("nan")),
                                    metrics.get("test/log_z", float("nan"))))


if __name__ == "__main__":
    main()
