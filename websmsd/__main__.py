"""`python3 -m websmsd ...`: the `websmsd` command (check-config, run, websms) from the
source tree, without installing anything."""

import sys

from websmsd.cli import websmsd_main

sys.exit(websmsd_main())
