"""``python -m ray_export``: the same as the ``ray-export`` command."""

import sys

from .cli import main

sys.exit(main())
