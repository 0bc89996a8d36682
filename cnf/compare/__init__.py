"""``cnf compare``: run an experiment suite (every member on every dataset and seed), then
write the comparison report.

- :mod:`cnf.compare.suite` — the suite file (schema), its plan (one ``cnf fit`` command per
  member, dataset and seed) and the key a finished run is recognised by (budget + config
  hash);
- :mod:`cnf.compare.runner` — running a plan: local subprocesses (one per GPU), the suite's
  state file ``runs/<suite>/suite.json``, progress and ETA;
- :mod:`cnf.compare.slurm` — the SLURM launcher (one job per run, through submitit);
- :mod:`cnf.compare.cli` — the command line.

None of them imports torch or Lightning (the runs do, in their own processes).
"""

from cnf.compare.cli import main
from cnf.compare.runner import LocalLauncher, run_suite
from cnf.compare.suite import Member, RunKey, Suite, classify, load_suite, parse_duration, plan

__all__ = ["Member", "Suite", "RunKey", "load_suite", "plan", "classify", "run_suite",
           "LocalLauncher", "main", "parse_duration"]
