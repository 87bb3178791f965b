"""`python -m kubetune_api.build`: see `kubetune_api.build.cli`."""

import sys

from .cli import main

sys.exit(main())
