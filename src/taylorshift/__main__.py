"""``python -m taylorshift``: the same as the ``taylorshift`` command (needed by ``torchrun -m``)."""

import sys

from taylorshift.cli import main

sys.exit(main())
