"""``python -m fednas`` = the ``fednas`` command."""

import sys

from fednas.cli import main

sys.exit(main())
