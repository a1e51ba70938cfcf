"""``python -m detaudit`` is the ``detaudit`` command."""

import sys

from .cli import main

sys.exit(main())
