"""``cnf compare``: run an experiment suite (every member on every dataset and seed), then
write the comparison report.

- :mod:`cnf.compare.suite` — the suite file (schema) and its plan (one ``cnf fit`` command
  per member, dataset and seed);
- :mod:`cnf.compare.keys` — budgets and the key a finished run is recognised by (budget +
  config hash), and whether a planned run is to run, to skip or in conflict;
- :mod:`cnf.compare.runner` — running a plan: local subprocesses (one per GPU), the suite's
  state file ``runs/<suite>/suite.json``, progress and ETA;
- :mod:`cnf.compare.slurm` — the SLURM launcher (one job per run, through submitit);
- :mod:`cnf.compare.cli` — the command line.

None of them imports torch or Lightning (the runs do, in their own processes).
"""

from cnf.compare.cli import main
from cnf.compare.keys import RunKey, classify, parse_duration
from cnf.compare.runner import LocalLauncher, run_suite
from cnf.compare.suite import Member, Suite, load_suite, plan

__all__ = ["Member", "Suite", "RunKey", "load_suite", "plan", "classify", "run_suite",
           "LocalLauncher", "main", "parse_duration"]
