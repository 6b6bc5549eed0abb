"""``python -m ascend_webhooks``: the same CLI as the ``ascend-webhooks`` script."""

import sys

from .cli import main

sys.exit(main())
