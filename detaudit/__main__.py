"""``python -m detaudit`` is the ``detaudit`` command."""

import sys

from detaudit.cli import main

sys.exit(main())
