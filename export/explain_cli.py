"""`python -m export.explain_cli`, as the docs have always shown it: runs export/cli/explain.py."""

import sys

from export.cli.explain import main

if __name__ == "__main__":
    sys.exit(main())
