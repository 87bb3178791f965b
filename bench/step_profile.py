"""Profiler analysis for bench/trainer_bench.py: where one optimizer step's time goes.

From torch.profiler's FunctionEvents: GPU kernel time against the step's wall time (CPU-bound or
GPU-bound), kernel launches, host-device syncs and which op caused each, and the top kernels."""

from __future__ import annotations

import math
from typing import Any

BENCH_SYNC = "bench::sync"
LAUNCH_PREFIXES = (
    "cudaLaunchKernel",
    "cuLaunchKernel",
    "cudaLaunchCooperativeKernel",
    "cuLaunchCooperativeKernel",
    "cudaGraphLaunch",
    "cuGraphLaunch",
)
TOP_N = 15


def bench_sync(cuda: bool) -> None:
    """torch.cuda.synchronize(), inside a profiler range named BENCH_SYNC so profile_summary can
    tell the bench's own step-boundary syncs from the training loop's."""
    if not cuda:
        return
    import torch

    with torch.profiler.record_function(BENCH_SYNC):
        torch.cuda.synchronize()


def _on_cpu(e: Any) -> bool:
    # DeviceType.CPU / DeviceType.CUDA; str() gives "DeviceType.CPU"
    return str(getattr(e, "device_type", "CPU")).rsplit(".", 1)[-1] == "CPU"


def _span_us(e: Any) -> tuple[float, float]:
    tr = getattr(e, "time_range", None)
    if tr is not None:
        return float(tr.start), float(tr.end)
    start = float(getattr(e, "start_us", 0.0))  # not a FunctionEvent: best effort
    return start, start + float(getattr(e, "duration_us", 0.0))


def _self_cpu_us(e: Any) -> float:
    try:
        return float(e.self_cpu_time_total)
    except Exception:
        a, b = _span_us(e)
        return b - a


def _top(rows: dict[str, list[float]], n: int = TOP_N) -> list[dict[str, Any]]:
    """{name: [count, total_us]} -> the n largest totals as [{name, count, total_s}]."""
    best = sorted(rows.items(), key=lambda kv: -kv[1][1])[:n]
    return [{"name": k[:100], "count": int(c), "total_s": t / 1e6} for k, (c, t) in best]


def _union_s(spans: list[tuple[float, float]]) -> float:
    total, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > end:
            total += b - max(a, end)
            end = b
    return total / 1e6


def profile_summary(events: Any, wall_s: float) -> dict[str, Any]:
    """One profiled optimizer step, from torch.profiler's FunctionEvents (`prof.events()`).

    gpu_kernel_s: summed durations of the device's kernels (memcpy/memset apart, in
    gpu_memcpy_s); gpu_active_s: the union of all device activity (kernels may overlap across
    streams); gpu_busy_fraction = gpu_kernel_s / wall_s, low means the GPU waits on the CPU.
    kernel_launches: cudaLaunchKernel-like runtime calls. syncs: the runtime calls that block the
    CPU until the GPU catches up (names containing "Synchronize", and synchronous cudaMemcpy;
    a `.item()` is one cudaMemcpyAsync DtoH plus one cudaStreamSynchronize, so it counts once),
    without the bench's own (inside BENCH_SYNC, or the profiler's own after the last of them);
    sync_ops: which ops they came from (outermost > innermost enclosing op); dtoh_copies: device
    to host copies on the GPU timeline (async offload copies included). cpu_op_count: aten ops
    (nested ones too). top_kernels: the TOP_N kernels by total time, or on a CPU-only profile the
    aten ops by self CPU time; top_cpu_ops: aten ops by self CPU time (also on CUDA)."""
    events = list(events)
    cpu = [e for e in events if _on_cpu(e)]
    cpu_names = {e.name for e in cpu}
    # Kineto mirrors record_function ranges (torch's "Optimizer.step#AdamW.step", our BENCH_SYNC)
    # onto the GPU timeline as annotations spanning their kernels: not kernels themselves.
    dev = [
        e
        for e in events
        if not _on_cpu(e)
        and not getattr(e, "is_user_annotation", False)
        and e.name not in cpu_names
    ]
    kernels: dict[str, list[float]] = {}
    kernel_us = memcpy_us = 0.0
    dtoh = htod = 0
    spans = []
    for e in dev:
        a, b = _span_us(e)
        spans.append((a, b))
        if e.name.startswith(("Memcpy", "Memset")):
            memcpy_us += b - a
            dtoh += "DtoH" in e.name
            htod += "HtoD" in e.name
            continue
        kernel_us += b - a
        row = kernels.setdefault(e.name, [0, 0.0])
        row[0] += 1
        row[1] += b - a

    markers = [_span_us(e) for e in cpu if e.name == BENCH_SYNC]
    last_marker_end = max((b for _, b in markers), default=math.inf)

    def bench_own(e: Any) -> bool:
        a, b = _span_us(e)
        return a >= last_marker_end or any(m0 <= a and b <= m1 for m0, m1 in markers)

    aten: dict[str, list[float]] = {}
    launches = 0
    launch_us = sync_us = 0.0
    syncs: dict[str, int] = {}
    sync_ops: dict[str, int] = {}
    for e in cpu:
        name = e.name
        if name.startswith("aten::"):
            row = aten.setdefault(name, [0, 0.0])
            row[0] += 1
            row[1] += _self_cpu_us(e)
        elif name.startswith(LAUNCH_PREFIXES):
            launches += 1
            a, b = _span_us(e)
            launch_us += b - a
        elif ("Synchronize" in name or name == "cudaMemcpy") and not bench_own(e):
            syncs[name] = syncs.get(name, 0) + 1
            a, b = _span_us(e)
            sync_us += b - a
            chain: list[str] = []
            parent = getattr(e, "cpu_parent", None)
            while parent is not None and len(chain) < 50:
                chain.append(parent.name)
                parent = getattr(parent, "cpu_parent", None)
            site = f"{chain[-1]} > {chain[0]}" if len(chain) > 1 else (chain or ["-"])[0]
            sync_ops[site] = sync_ops.get(site, 0) + 1
    on_gpu = bool(dev) or launches > 0
    return {
        "wall_s": wall_s,
        "gpu_kernel_s": kernel_us / 1e6,
        "gpu_busy_fraction": kernel_us / 1e6 / wall_s if wall_s > 0 else 0.0,
        "gpu_active_s": _union_s(spans),
        "gpu_memcpy_s": memcpy_us / 1e6,
        "kernel_launches": launches,
        "launch_cpu_s": launch_us / 1e6,
        "syncs": sum(syncs.values()),
        "syncs_by_call": syncs,
        "sync_wait_s": sync_us / 1e6,
        "sync_ops": dict(sorted(sync_ops.items(), key=lambda kv: -kv[1])[:TOP_N]),
        "dtoh_copies": dtoh,
        "htod_copies": htod,
        "cpu_op_count": sum(int(c) for c, _ in aten.values()),
        "top_kernels": _top(kernels) if on_gpu else _top(aten),
        "top_cpu_ops": _top(aten),
        "events": len(events),
    }


def profile_overview(steps: list[dict[str, Any]], step_p50_s: float, grad_accum: int) -> dict:
    """Means over the profiled steps, per step and per micro-batch. The profiler slows the CPU
    side, so gpu_busy_fraction is pessimistic; gpu_kernel_s_over_step_p50 sets the (unaffected)
    kernel time against the unprofiled median step instead."""
    ok = [s for s in steps if "error" not in s]
    if not ok:
        return {}

    def mean(key: str) -> float:
        return float(sum(s[key] for s in ok) / len(ok))

    out = {
        k: mean(k)
        for k in (
            "wall_s",
            "gpu_kernel_s",
            "gpu_busy_fraction",
            "gpu_active_s",
            "kernel_launches",
            "syncs",
            "sync_wait_s",
            "cpu_op_count",
        )
    }
    out["kernel_launches_per_micro_batch"] = out["kernel_launches"] / grad_accum
    out["syncs_per_micro_batch"] = out["syncs"] / grad_accum
    out["gpu_kernel_s_over_step_p50"] = out["gpu_kernel_s"] / step_p50_s if step_p50_s else 0.0
    out["profiled_wall_over_step_p50"] = out["wall_s"] / step_p50_s if step_p50_s else 0.0
    return out
