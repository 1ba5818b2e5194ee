"""``python -m faml.cli``: the ``faml`` command."""

import sys

from faml.cli import main

sys.exit(main())
