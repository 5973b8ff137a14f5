"""``python -m gateway_client.cli``: the same as the ``gateway-client`` command."""

import sys

from gateway_client.cli import main

sys.exit(main())
