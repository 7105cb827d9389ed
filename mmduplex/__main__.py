"""``python -m mmduplex`` == the ``mmduplex`` console script."""

import sys

from mmduplex.cli import main

sys.exit(main())
