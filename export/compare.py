"""`python -m export.compare`, as the docs have always shown it: runs export/cli/compare.py."""

import sys

from export.cli.compare import main

if __name__ == "__main__":
    sys.exit(main())
