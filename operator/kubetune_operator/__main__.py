"""`kubetune-operator` (and `python -m kubetune_operator`): run the operator.

Reads its configuration from the environment (settings.py), logs JSON lines, and starts Kopf
for the configured namespaces (all when KUBETUNE_NAMESPACES is empty). Leader election,
/metrics and /healthz start in the startup handler (handlers.py), so `kopf run -m
kubetune_operator` behaves the same.
"""

from __future__ import annotations

import sys

import kopf
from pydantic import ValidationError

from . import jsonlog as klog
from .settings import OperatorSettings


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args and args[0] == "--version":
        from kubetune_api.version import version_line

        print(version_line("kubetune-operator"))
        return 0
    from kubetune_api.extraca import ExtraCAError
    from kubetune_api.extraca import apply as apply_extra_ca

    try:
        apply_extra_ca()
    except ExtraCAError as e:
        print(f"kubetune-operator: invalid configuration: {e}", file=sys.stderr)
        return 2
    try:
        settings = OperatorSettings()
    except (ValidationError, ValueError) as e:
        print(f"kubetune-operator: invalid configuration: {e}", file=sys.stderr)
        return 2
    klog.setup(settings.log_level)
    from . import handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        standalone=True,
        clusterwide=not settings.namespaces,
        namespaces=settings.namespaces,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
