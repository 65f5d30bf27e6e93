"""``python -m simulations`` = the ``fednas`` command."""

import sys

from simulations.cli import main

sys.exit(main())
