"""Entry point: ``PYTHONPATH=tests python -m nodeagent --node NAME ...`` (see __init__.py)."""

import sys

from .agent import main

sys.exit(main())
