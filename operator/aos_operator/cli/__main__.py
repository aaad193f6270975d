"""`python -m aos_operator.cli`: the same as `aosctl`."""

import sys

from aos_operator.cli import main

sys.exit(main())
