"""`python -m serving`: same as `xfer-serve`."""

import sys

from serving.cli import main

sys.exit(main())
