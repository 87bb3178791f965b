"""kubetune operator: runs FineTuneJobs as batch/v1 Jobs and keeps their status true.

Importing the package registers the Kopf handlers, so `kopf run -m kubetune_operator` works;
`kubetune-operator` (__main__.py) is the usual entry point.
"""

from . import handlers as _handlers  # noqa: F401
