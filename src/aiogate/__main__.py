"""`python -m aiogate` is the same as the `aiogate` command."""

import sys

from .cli import main

sys.exit(main())
