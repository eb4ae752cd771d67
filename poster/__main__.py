"""``python -m poster`` (and ``torchrun -m poster``) = the ``poster`` command."""

import sys

from .cli import console_main

sys.exit(console_main())
