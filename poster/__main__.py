"""``python -m poster`` (and ``torchrun -m poster``) = the ``poster`` command."""

import sys

from .cli import main

sys.exit(main())
