"""`python -m serving`: same as `xfer-serve`."""

import sys

from serving.server import main

sys.exit(main())
