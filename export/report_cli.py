"""`python -m export.report_cli`, as the docs have always shown it: runs export/cli/report.py."""

import sys

from export.cli.report import main

if __name__ == "__main__":
    sys.exit(main())
