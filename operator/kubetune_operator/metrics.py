"""Prometheus metrics of the operator, served on KUBETUNE_METRICS_PORT at /metrics."""

from __future__ import annotations

import threading

from kubetune_api.v1alpha1 import Phase
from prometheus_client import Counter, Gauge, Histogram, start_http_server

JOBS = Gauge(
    "kubetune_finetunejobs",
    "FineTuneJobs handled by this operator replica, by phase.",
    ["phase"],
)
RECONCILE_SECONDS = Histogram(
    "kubetune_reconcile_duration_seconds",
    "Time to reconcile one FineTuneJob.",
    ["result"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
API_ERRORS = Counter(
    "kubetune_api_errors_total",
    "Kubernetes API requests that failed (HTTP status 0: no answer).",
    ["verb", "resource", "code"],
)
GPU_SECONDS = Counter(
    "kubetune_gpu_seconds_total",
    "GPU-seconds used by trainer pods, as accounted into FineTuneJob status.",
)
EVENTS = Counter(
    "kubetune_events_total", "Kubernetes Events posted on FineTuneJobs.", ["type", "reason"]
)
LEADER = Gauge("kubetune_leader", "1 while this replica holds the leader Lease.")

_PHASES = [p.value for p in Phase] + ["Unknown"]
_lock = threading.Lock()
_phases: dict[tuple[str, str], str] = {}


def set_phase(namespace: str, name: str, phase: str | None) -> None:
    """Record the phase of one FineTuneJob (None: it is gone) and refresh the gauge."""
    with _lock:
        if phase is None:
            _phases.pop((namespace, name), None)
        else:
            _phases[(namespace, name)] = phase if phase in _PHASES else "Unknown"
        counts = dict.fromkeys(_PHASES, 0)
        for p in _phases.values():
            counts[p] += 1
        for p, n in counts.items():
            JOBS.labels(p).set(n)


def serve(port: int) -> None:
    if port:
        start_http_server(port)
