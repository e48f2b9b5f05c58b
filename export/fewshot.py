"""`python -m export.fewshot`, as the docs have always shown it: runs export/cli/fewshot.py."""

import sys

from export.cli.fewshot import main

if __name__ == "__main__":
    sys.exit(main())
