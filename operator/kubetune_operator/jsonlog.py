"""Structured JSON logs: one object per line, with `namespace` and `name` on every line.

The FineTuneJob a line is about comes from Kopf's `k8s_ref` extra (its per-object loggers) or
the context variable `current` that the reconcile worker sets around each reconcile (it also
flows into worker threads started with asyncio.to_thread). Lines that
are about no object (startup, leader election) carry `null` for both.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

current: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "kubetune_current_object", default=None
)

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        namespace = name = None
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            namespace, name = ref.get("namespace"), ref.get("name")
        if namespace is None and (obj := current.get()) is not None:
            namespace, name = obj
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "namespace": namespace,
            "name": name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD or key in out or key in ("k8s_ref", "k8s_skip"):
                continue
            if key.startswith("_"):
                continue
            if isinstance(value, str | int | float | bool | None):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup(level: str = "INFO") -> None:
    """Send every logger (ours, Kopf's, the kubernetes client's) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Kopf's own loggers may have their own handlers when run via the `kopf` CLI.
    for name in ("kopf", "kopf.objects"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.propagate = True
    # Kopf says "Handler ... succeeded" for every watch event; only its warnings matter here.
    if root.level > logging.DEBUG:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    # The HTTP client would log request bodies at DEBUG; keep it quiet.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
