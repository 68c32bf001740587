"""``python -m studies.compare``: see :mod:`studies.compare.cli`."""

import sys

from studies.compare.cli import main

sys.exit(main())
