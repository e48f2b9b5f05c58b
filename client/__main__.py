"""`python -m client` = `xfer-score`."""

import sys

from client.cli import main

sys.exit(main())
