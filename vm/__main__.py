"""`python -m vm`: see vm.cli."""

import sys

from vm.cli import main

sys.exit(main())
