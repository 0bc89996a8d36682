"""``python -m cnf.evaluate`` = ``cnf evaluate``."""

import sys

from cnf.errors import CNFError
from cnf.evaluate.cli import main

try:
    main()
except CNFError as exc:
    print(f"cnf evaluate: error: {exc}", file=sys.stderr)
    sys.exit(2)
