#!/usr/bin/env python3
"""One row per single-GPU example manifest: kubetune-train against its stock script (issue 13
floor 3).

For each row, "ours" is `kubetune-train` itself (the pod's entry point) on the example's own
FineTuneJob spec, read from examples/<name>.yaml, with only what a benchmark must change: the
model and the data become PVC paths to a local directory, `maxSteps` is set, evaluation,
checkpoints, early stopping, tracking and the merged model are off (all outside the timed
training). "stock" is the same spec as a plain transformers/peft/trl script
(bench/stock_examples.py). Both train the same rows on the same seeded random-weight model of
the example model's published shape, each in a fresh child process, one after the other on the
same GPU, with bench/product_bench.py's instrument (real tokens/s from the first step and after
5 warm-up steps, per-step losses, max_memory_reserved, nvidia-smi's per-process peak).

One JSON line per row is appended to --out as soon as the row finishes, so a run cut short
keeps its finished rows. `bench/examples_table.py` turns the lines into the markdown table.

    python bench/example_bench.py --out r.jsonl                       # every row, GPU shapes
    python bench/example_bench.py --model tiny --steps 3 --rows bert-lora,chat-sft   # CPU wiring
    python bench/example_bench.py --list
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in ("api", "trainer-image", "bench"):
    sys.path.insert(0, str(REPO / _p))

from example_synth import SHAPES, TINY, build_model_dir, write_data  # noqa: E402
from product_bench import Recorder, ratio, run_child, side_by_side_args  # noqa: E402

# ---------------------------------------------------------------------------------------------
# The rows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    example: str  # examples/<example>.yaml
    shape: str  # SHAPES key (the example model's published shape)
    data: str  # data file name under pvc/data (its generator: DATA)
    rows_per_step: int  # rows an optimizer step consumes (for how many rows to write)
    packed: bool = False  # rows packed into maxSeqLength sequences (more rows per step)


# Cheapest first: a call cut short keeps the most rows. Mistral QLoRA (floor 1's row, measured
# three times already) last: its model alone is 14.5 GB to build, write and load twice.
ROWS: dict[str, Row] = {
    "bert-lora": Row("bert-lora-classifier", "bert-base-uncased", "sst2.jsonl", 32),
    "prompt-tuning": Row("prompt-tuning", "bloomz-560m", "complaints.jsonl", 8),
    "bert-full": Row("bert-sentiment-full", "bert-base-uncased", "imdb.jsonl", 16),
    "chat-sft": Row("chat-messages-sft", "qwen2.5-0.5b", "chats.jsonl", 8),
    "prompt-completion": Row(
        "prompt-completion-sft", "llama-3.2-1b", "instructions.parquet", 32, packed=True
    ),
    "mistral-qlora": Row("mistral-7b-qlora-quotes", "mistral-7b", "quotes.jsonl", 4),
}

# Single-GPU examples without a row, and why (tests/unit/test_example_bench.py checks that every
# example with `resources.gpus: 1` is in ROWS or here).
NOT_BENCHED: dict[str, str] = {
    "dpo-preference": "preference task (DPO): not in issue 13's list; needs a stock DPOTrainer "
    "script and preference rows (next)",
    "general": "prompt-completion LoRA on the same Llama-3.2-1B shape as the "
    "prompt-completion row (which adds DoRA and packing)",
    "domain": "general's merged model as its base (model.fromJob): the same workload as general",
    "evaluation-gate": "the BERT LoRA classifier's training plus test-set scoring and a "
    "promotion gate: the training is the bert-lora row; the scoring is outside the step time",
}


def rows_needed(row: Row, steps: int) -> int:
    """Rows for `steps` optimizer steps with a margin; packed rows (~170 tokens a pair) fill
    1024-token sequences, about 6 pairs each."""
    n = steps * row.rows_per_step
    return int(n * (7 if row.packed else 1.25)) + 16


# ---------------------------------------------------------------------------------------------
# The spec: the example's own, minus what a benchmark must change
# ---------------------------------------------------------------------------------------------


def example_spec(row: str, steps: int, cuda: bool) -> dict[str, Any]:
    import yaml

    r = ROWS[row]
    doc = yaml.safe_load((REPO / "examples" / f"{r.example}.yaml").read_text())
    spec: dict[str, Any] = doc["spec"]
    spec["model"] = {"pvc": {"claimName": "models", "path": f"/{r.shape}"}}
    ds = spec["dataset"]
    for source in ("hub", "s3Uri", "pvc", "validation"):
        ds.pop(source, None)
    ds["pvc"] = {"claimName": "data", "path": f"/{r.data}"}
    h = spec.setdefault("hyperparameters", {})
    for k in ("earlyStopping", "evalSteps", "saveSteps", "saveTotalLimit"):
        h.pop(k, None)
    h.update(maxSteps=steps, evalStrategy="no", saveStrategy="no")
    if not cuda and h.get("precision") in ("bf16", "fp16"):
        h["precision"] = "fp32"
    spec["resources"] = {"gpus": 1 if cuda else 0}
    spec["output"] = {
        "uri": "s3://bench/out",
        "adapter": str(spec["method"]["type"]) != "full",
        "mergedModel": str(spec["method"]["type"]) == "full",
        "checkpoints": False,
    }
    spec["tracking"] = {"reportTo": []}
    spec.pop("runPolicy", None)
    return spec


# ---------------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------------


def child_ours(row: str, steps: int, root: Path, result: Path) -> int:
    from kubetune_trainer import __main__ as entry
    from kubetune_trainer import train
    from kubetune_trainer.testing.harness import trainer_config

    rec = Recorder(result, steps, 0)
    build = train.build_trainer

    def build_and_attach(*a: Any, **kw: Any) -> Any:
        return rec.attach(build(*a, **kw))

    train.build_trainer = build_and_attach  # the pipeline calls train.build_trainer
    spec = json.loads((root / f"spec-{row}.json").read_text())
    cfg = trainer_config(spec, name=f"ex-{row}", work_dir=root / f"work-{row}")
    (root / f"config-{row}.json").write_text(json.dumps(cfg))
    term = root / f"termination-{row}.json"
    term.unlink(missing_ok=True)
    os.environ["KUBETUNE_PVC_ROOT"] = str(root / "pvc")
    os.environ["KUBETUNE_TERMINATION_LOG"] = str(term)
    rc = entry.main(
        ["--config", str(root / f"config-{row}.json"), "--output-dir", str(root / "artifacts")]
    )
    if result.exists():
        data = json.loads(result.read_text())
        data["termination"] = json.loads(term.read_text()) if term.exists() else None
        result.write_text(json.dumps(data))
    return int(rc or 0)


def child_stock(row: str, steps: int, root: Path, result: Path) -> int:
    from stock_examples import build

    r = ROWS[row]
    pvc = root / "pvc"
    trainer = build(
        row, pvc / "models" / r.shape, pvc / "data" / r.data, steps, root / f"stock-{row}"
    )
    Recorder(result, steps, 0).attach(trainer).train()
    return 0


# ---------------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------------

LOG_WORDS = ("speed:", "distribution:", "trainable", "accumulation", "Error", "error")


def run_side(
    side: str, row: str, steps: int, root: Path, cuda: bool, timeout: float
) -> dict[str, Any]:
    result = root / f"result-{side}-{row}.json"
    result.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--child", side, "--row", row, "--steps", str(steps)]
    cmd += ["--root", str(root), "--result", str(result)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / p) for p in ("api", "trainer-image", "bench")]
        + list(filter(None, [env.get("PYTHONPATH")]))
    )
    rec, data = run_child(cmd, env, result, cuda, LOG_WORDS, timeout)
    if side == "ours":
        rec["termination"] = data.get("termination")
    return rec


RATIO_KEYS = (
    "tok_s_from_start",
    "tok_s_after_warmup",
    "max_memory_reserved_gib",
    "nvidia_smi_process_peak_mib",
)


def run_row(row: str, a: argparse.Namespace, cuda: bool) -> dict[str, Any]:
    r = ROWS[row]
    pvc = a.root / "pvc"
    model_dir = pvc / "models" / r.shape
    t0 = time.perf_counter()
    if not (model_dir / "config.json").exists():  # built once, shared by both sides
        fields = (TINY if a.model == "tiny" else SHAPES)[r.shape]
        build_model_dir(r.shape, fields, model_dir, "cuda" if cuda else "cpu")
        if cuda:
            import torch

            torch.cuda.empty_cache()
    data = pvc / "data" / r.data
    if not data.exists():
        write_data(r.data, data, rows_needed(r, a.steps))
    setup_s = time.perf_counter() - t0
    spec = example_spec(row, a.steps, cuda)
    (a.root / f"spec-{row}.json").write_text(json.dumps(spec))
    sides = {s: run_side(s, row, a.steps, a.root, cuda, a.timeout) for s in a.sides.split(",")}
    line: dict[str, Any] = {
        "label": a.label,
        "row": row,
        "example": f"examples/{r.example}.yaml",
        "model": a.model if a.model == "tiny" else r.shape,
        "steps": a.steps,
        "setup_s": setup_s,
        "spec": spec,
        **sides,
        "ratios": {},
        "loss_diff": {},
    }
    s, o = sides.get("stock", {}), sides.get("ours", {})
    if s and o:
        line["ratios"] = {k: ratio(o.get(k), s.get(k)) for k in RATIO_KEYS}
        pairs = list(zip(o.get("losses", []), s.get("losses", []), strict=False))
        if pairs:
            diffs = [abs(x - y) for x, y in pairs]
            line["loss_diff"] = {
                "step1": diffs[0],
                "max": max(diffs),
                "mean": sum(diffs) / len(diffs),
            }
    return line


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="published", choices=["published", "tiny"])
    p.add_argument("--rows", default=",".join(ROWS), help="comma-separated, in this order")
    p.add_argument("--timeout", type=float, default=240, help="seconds per side")
    side_by_side_args(p, "row", steps=20, root=Path("/tmp/example-bench"))
    p.add_argument("--list", action="store_true", help="print the rows and exit")
    a = p.parse_args()
    if a.child == "ours":
        return child_ours(a.row, a.steps, a.root, a.result)
    if a.child == "stock":
        return child_stock(a.row, a.steps, a.root, a.result)
    if a.list:
        for name, r in ROWS.items():
            print(f"{name:18} examples/{r.example}.yaml  {r.shape}  {r.data}")
        return 0

    import torch

    cuda = torch.cuda.is_available()
    a.root.mkdir(parents=True, exist_ok=True)
    failed = False
    for row in a.rows.split(","):
        if row not in ROWS:
            raise SystemExit(f"--rows: unknown row {row!r}; rows: {', '.join(ROWS)}")
        line = run_row(row, a, cuda)
        line["device"] = torch.cuda.get_device_name() if cuda else "cpu"
        line["torch"] = torch.__version__
        failed |= any(line[s].get("exit_code") for s in a.sides.split(","))
        if a.out:
            with a.out.open("a") as f:
                f.write(json.dumps(line) + "\n")
        brief: dict[str, Any] = {
            "row": row,
            "ratios": line["ratios"],
            "loss_diff": line["loss_diff"],
        }
        for side in a.sides.split(","):
            v = line[side]
            brief[side] = {k: v.get(k) for k in ("exit_code", "process_wall_s", *RATIO_KEYS)}
        print(json.dumps(brief), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
