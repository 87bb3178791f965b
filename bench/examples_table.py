#!/usr/bin/env python3
"""The markdown table of bench/example_bench.py's JSON lines (issue 13 floor 3).

    python bench/examples_table.py bench/results/h200-examples.jsonl [more.jsonl ...]

One table row per line, in file order; a side that failed or timed out says so instead of its
numbers. The last column is floor 3's verdict: kubetune no slower than stock, from the start
and after the 5 warm-up steps.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HEADER = (
    "| example | model (published shape) | steps | stock tok/s start / after 5 "
    "| kubetune tok/s start / after 5 | ratio start / after 5 "
    "| max reserved GiB stock → ours (ratio) | nvidia-smi MiB stock → ours (ratio) "
    "| loss Δ step 1 / max | no slower? |\n"
    "|---|---|---:|---|---|---|---|---|---|---|"
)


def _n(x: Any, digits: int = 0) -> str:
    if not isinstance(x, int | float):
        return "-"
    return f"{x:,.{digits}f}"


def _side_failed(v: dict[str, Any]) -> str | None:
    if not v:
        return "not run"
    if v.get("timed_out"):
        return "timed out"
    if v.get("exit_code"):
        return f"exit {v['exit_code']}"
    if v.get("tok_s_from_start") is None:
        return "no steps"
    return None


def verdict(line: dict[str, Any]) -> str:
    r = line.get("ratios") or {}
    start, warm = r.get("tok_s_from_start"), r.get("tok_s_after_warmup")
    if start is None:
        return "-"
    values = [x for x in (start, warm) if x is not None]
    return "yes" if min(values) >= 1.0 else "**no**"


def table_row(line: dict[str, Any]) -> str:
    s, o = line.get("stock") or {}, line.get("ours") or {}
    r = line.get("ratios") or {}
    d = line.get("loss_diff") or {}
    example = Path(line.get("example", line.get("row", "?"))).name
    cells = [f"`{example}`", str(line.get("model", "")), str(line.get("steps", ""))]
    for v in (s, o):
        failed = _side_failed(v)
        cells.append(
            failed
            if failed
            else f"{_n(v.get('tok_s_from_start'))} / {_n(v.get('tok_s_after_warmup'))}"
        )
    cells.append(
        f"**{_n(r.get('tok_s_from_start'), 2)}x / {_n(r.get('tok_s_after_warmup'), 2)}x**"
        if r.get("tok_s_from_start") is not None
        else "-"
    )
    cells.append(
        f"{_n(s.get('max_memory_reserved_gib'), 2)} → {_n(o.get('max_memory_reserved_gib'), 2)}"
        f" ({_n(r.get('max_memory_reserved_gib'), 2)}x)"
    )
    cells.append(
        f"{_n(s.get('nvidia_smi_process_peak_mib'))} → {_n(o.get('nvidia_smi_process_peak_mib'))}"
        f" ({_n(r.get('nvidia_smi_process_peak_mib'), 2)}x)"
    )
    cells.append(f"{_n(d.get('step1'), 4)} / {_n(d.get('max'), 4)}" if d else "-")
    cells.append(verdict(line))
    return "| " + " | ".join(cells) + " |"


def render(lines: list[dict[str, Any]]) -> str:
    out = [HEADER, *(table_row(x) for x in lines)]
    devices = sorted({str(x.get("device")) for x in lines if x.get("device")})
    if devices:
        out.append("")
        out.append(
            f"Device: {', '.join(devices)}; torch {lines[0].get('torch', '?')}. "
            "Wall time per side (process start to exit): "
            + "; ".join(
                f"{x.get('row')} {_n((x.get('stock') or {}).get('process_wall_s'))} s / "
                f"{_n((x.get('ours') or {}).get('process_wall_s'))} s"
                for x in lines
            )
            + "."
        )
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jsonl", nargs="+", type=Path)
    a = p.parse_args()
    lines = [json.loads(t) for f in a.jsonl for t in f.read_text().splitlines() if t.strip()]
    print(render(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
