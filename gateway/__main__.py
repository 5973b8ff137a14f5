"""``python -m gateway``: the ``gateway`` command (``gateway.cli``), for where the console script is not on the PATH."""

import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
