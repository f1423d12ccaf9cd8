"""``python -m clustrix.cli``: the ``clustrix`` command."""

import sys

from . import main

sys.exit(main())
