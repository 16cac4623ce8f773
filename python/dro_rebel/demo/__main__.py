"""``python -m dro_rebel.demo demo|study ...``."""

import sys

from dro_rebel.demo.cli import main

sys.exit(main())
