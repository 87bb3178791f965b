#!/usr/bin/env python3
"""The product against the stock recipe, side by side, in one run (issue 13's measurement).

"ours" is `kubetune-train` itself (`kubetune_trainer.__main__.main`, the pod's entry point) on a
FineTuneJob spec with examples/mistral-7b-qlora-quotes.yaml's settings, model and data read as
PVC sources from local directories. "stock" is bench/stock_seed.py, the seed script. Both train
the same rows (one JSONL file of {"quote", "author"} rows, lognormal lengths, mean ~300
tokens) on the same random-weight model (built once, seeded, with the published shape), each in
a fresh child process, one after the other on the same GPU.

Both sides get the same instrument and nothing else: the trainer's `compute_loss` is wrapped to
keep each micro-batch's loss and real (non-pad) token count on the device, and a callback
synchronizes once at each optimizer step's end to stamp the time. Reported per side: real
tokens/s from the first step's start and after 5 warm-up steps, per-step losses,
`torch.cuda.max_memory_reserved`, and the peak of nvidia-smi's per-process memory (sampled
every 0.2 s; the whole GPU's used memory as a fallback). One JSON line per case (both sides and
the ratios) is appended to --out as soon as the case finishes.

    python bench/product_bench.py --model mistral-7b --cases qlora,lora --steps 40 --out r.jsonl
    python bench/product_bench.py --model tiny --cases qlora,lora --steps 3    # CPU wiring check
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "trainer-image"))
sys.path.insert(0, str(REPO / "bench"))

from product_bench_recorder import Recorder  # noqa: E402  (the instrument, both sides)

WARMUP = 5

# "ours+NAME" sides: kubetune-train with these environment variables (developers' A/B switches).
VARIANTS: dict[str, dict[str, str]] = {"liger": {"KUBETUNE_LIGER": "1"}}


def case_parts(case: str) -> tuple[str, int]:
    """`qlora`, `lora`, `qlora-ga4` (batch 4 x accumulation 4): (method, accumulation)."""
    method, _, rest = case.partition("-")
    return method, int(rest[2:]) if rest.startswith("ga") else 1


# Published shapes (config.json of the hub models); random weights.
SHAPES: dict[str, dict[str, Any]] = {
    "mistral-7b": {  # mistralai/Mistral-7B-v0.1
        "model_type": "mistral",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "max_position_embeddings": 32768,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "rms_norm_eps": 1e-5,
    },
    "tiny": {  # CPU wiring checks
        "model_type": "mistral",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 512,
        "max_position_embeddings": 2048,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
        "rms_norm_eps": 1e-5,
    },
}

from trainer_e2e import WORDS  # noqa: E402  (the e2e bench's word list)

AUTHORS = ["Oscar Wilde", "Albert Einstein", "Marilyn Monroe", "Mark Twain", "Dr. Seuss"]


# ---------------------------------------------------------------------------------------------
# Setup: model directory and rows
# ---------------------------------------------------------------------------------------------


def build_model_dir(shape: str, dest: Path, device: str) -> None:
    """A seeded random-weight model of the published shape, with a byte-level BPE tokenizer."""
    import torch
    from kubetune_trainer.testing.tiny import build_llama_tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = build_llama_tokenizer()
    fields = dict(SHAPES[shape])
    cfg = AutoConfig.for_model(fields.pop("model_type"), **fields)
    cfg.vocab_size = max(cfg.vocab_size, len(tok))
    cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(0)
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    m.save_pretrained(dest)
    tok.save_pretrained(dest)
    del m


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    """Quote rows of lognormal length (~300 BPE tokens on average, long tail)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.clip(rng.lognormal(math.log(150) - 0.405, 0.9, n), 8, 1000).astype(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for k in words:
            row = {"quote": " ".join(rng.choice(WORDS, k)), "author": str(rng.choice(AUTHORS))}
            f.write(json.dumps(row) + "\n")


def spec_for(case: str, steps: int, cuda: bool) -> dict[str, Any]:
    case, accumulation = case_parts(case)
    """examples/mistral-7b-qlora-quotes.yaml, setting by setting, with the model and data as PVC
    paths; `lora` is the same spec without quantization or checkpointing. The merged model is
    not written (it is outside the timed training and costs a minute of GPU time per run)."""
    method: dict[str, Any] = {
        "type": case,
        "lora": {
            "r": 16,
            "alpha": 32,
            "dropout": 0.05,
            "bias": "none",
            "targetModules": ["q_proj", "v_proj"],
        },
    }
    if case == "qlora":
        method["quantization"] = {
            "bits": 4,
            "quantType": "nf4",
            "doubleQuant": True,
            "computeDtype": "bfloat16",
        }
    return {
        "task": "causal-lm",
        "model": {"pvc": {"claimName": "models", "path": "/model"}},
        "dataset": {
            "pvc": {"claimName": "data", "path": "/quotes.jsonl"},
            "format": "text",
            "textTemplate": "Quote: {quote} Author: {author}",
            "maxSeqLength": 1024,
        },
        "method": method,
        "hyperparameters": {
            "epochs": 1,
            "maxSteps": steps,
            "batchSize": 4,
            "gradientAccumulationSteps": accumulation,
            "learningRate": 0.0002,
            "lrScheduler": "constant",
            "warmupRatio": 0.03,
            "maxGradNorm": 0.3,
            "groupByLength": True,
            "precision": "bf16" if cuda else "fp32",
            "gradientCheckpointing": case == "qlora",
            "optimizer": "adamw_torch",
            "saveStrategy": "no",
        },
        "resources": {"gpus": 1 if cuda else 0},
        "output": {
            "uri": "s3://bench/out",
            "adapter": True,
            "mergedModel": False,
            "checkpoints": False,
        },
        "tracking": {"reportTo": []},
    }


def child_ours(case: str, steps: int, root: Path, result: Path, profile: int = 0) -> int:
    import torch
    from kubetune_trainer import __main__ as entry
    from kubetune_trainer import train
    from kubetune_trainer.testing.harness import trainer_config

    cuda = torch.cuda.is_available()
    rec = Recorder(result, steps, profile)
    build = train.build_trainer

    def build_and_attach(*a: Any, **kw: Any) -> Any:
        return rec.attach(build(*a, **kw))

    train.build_trainer = build_and_attach  # the pipeline calls train.build_trainer
    work = root / f"work-{case}"
    cfg = trainer_config(spec_for(case, steps + profile, cuda), name=f"bench-{case}", work_dir=work)
    (root / f"config-{case}.json").write_text(json.dumps(cfg))
    os.environ["KUBETUNE_PVC_ROOT"] = str(root / "pvc")
    os.environ["KUBETUNE_TERMINATION_LOG"] = str(root / f"termination-{case}.json")
    rc = entry.main(
        ["--config", str(root / f"config-{case}.json"), "--output-dir", str(root / "artifacts")]
    )
    if result.exists():
        data = json.loads(result.read_text())
        term = root / f"termination-{case}.json"
        data["termination"] = json.loads(term.read_text()) if term.exists() else None
        result.write_text(json.dumps(data))
    return int(rc or 0)


def child_stock(case: str, steps: int, root: Path, result: Path, profile: int = 0) -> int:
    from stock_seed import build

    pvc = root / "pvc"
    method, accumulation = case_parts(case)
    trainer = build(
        pvc / "models" / "model",
        pvc / "data" / "quotes.jsonl",
        method=method,
        accumulation=accumulation,
        steps=steps + profile,
        output_dir=root / f"stock-{case}",
    )
    Recorder(result, steps, profile).attach(trainer).train()
    return 0


# ---------------------------------------------------------------------------------------------
# The parent: one child per side, memory sampled from outside
# ---------------------------------------------------------------------------------------------


def _smi(query: str) -> list[list[str]]:
    out = subprocess.run(
        ["nvidia-smi", f"--query-{query}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    return [[c.strip() for c in ln.split(",")] for ln in out.splitlines() if ln.strip()]


def sample_memory(pid: int, peaks: dict[str, int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            for p, used in _smi("compute-apps=pid,used_memory"):
                if p == str(pid):
                    peaks["process_mib"] = max(peaks.get("process_mib", 0), int(used))
            for (used,) in _smi("gpu=memory.used"):
                peaks["gpu_mib"] = max(peaks.get("gpu_mib", 0), int(used))
        except Exception:
            pass
        stop.wait(0.2)


def summarize(steps: list[dict[str, Any]]) -> dict[str, Any]:
    if not steps:
        return {}
    total_t = steps[-1]["t"]
    total_tok = sum(s["tokens"] for s in steps)
    out: dict[str, Any] = {
        "steps_done": len(steps),
        "train_s": total_t,
        "real_tokens": total_tok,
        "tok_s_from_start": total_tok / total_t if total_t > 0 else None,
        "losses": [round(s["loss"], 5) for s in steps],
    }
    if len(steps) > WARMUP:
        t = total_t - steps[WARMUP - 1]["t"]
        tok = sum(s["tokens"] for s in steps[WARMUP:])
        out["tok_s_after_warmup"] = tok / t if t > 0 else None
    return out


LOG_WORDS = ("speed:", "distribution:", "trainable", "Error", "error")


def run_child(
    cmd: list[str],
    env: dict[str, str],
    result: Path,
    cuda: bool,
    log_words: tuple[str, ...],
    timeout: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One bench child, its GPU memory sampled by nvidia-smi (on CUDA): (the record of the run,
    the result JSON the child wrote). With a timeout the child is killed when it runs past it
    (recorded as timed_out)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peaks: dict[str, int] = {}
    stop = threading.Event()
    sampler = threading.Thread(target=sample_memory, args=(proc.pid, peaks, stop), daemon=True)
    if cuda:
        sampler.start()
    timed_out = False
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        timed_out = True
    stop.set()
    data = json.loads(result.read_text()) if result.exists() else {}
    rec: dict[str, Any] = {
        "exit_code": proc.returncode,
        "process_wall_s": time.perf_counter() - t0,
        "nvidia_smi_process_peak_mib": peaks.get("process_mib"),
        "nvidia_smi_gpu_peak_mib": peaks.get("gpu_mib"),
        "max_memory_reserved_gib": data.get("max_memory_reserved_gib"),
        "max_memory_allocated_gib": data.get("max_memory_allocated_gib"),
        **summarize(data.get("steps", [])),
        "log": [ln for ln in output.splitlines() if any(w in ln for w in log_words)][-12:],
    }
    if timeout is not None:
        rec["timed_out"] = timed_out
    if proc.returncode != 0 or not data:
        rec["log_tail"] = output[-4000:]
    return rec, data


def run_side(
    side: str, case: str, steps: int, root: Path, cuda: bool, profile: int = 0
) -> dict[str, Any]:
    result = root / f"result-{side}-{case}.json"
    result.unlink(missing_ok=True)
    kind, _, variant = side.partition("+")
    cmd = [sys.executable, __file__, "--child", kind, "--case", case, "--steps", str(steps)]
    cmd += ["--root", str(root), "--result", str(result), "--profile-steps", str(profile)]
    env = {**os.environ, **VARIANTS.get(variant, {})}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "trainer-image"), str(REPO / "bench"), *filter(None, [env.get("PYTHONPATH")])]
    )
    rec, data = run_child(cmd, env, result, cuda, LOG_WORDS)
    rec["profiles"] = data.get("profiles", [])
    if kind == "ours":
        rec["termination"] = data.get("termination")
    return rec


def side_by_side_args(p: argparse.ArgumentParser, item: str, *, steps: int, root: Path) -> None:
    """The arguments of a stock-vs-ours bench: the sides, steps, work root, JSON out and label,
    and the hidden ones `run_side` passes to a child (--child, --<item>, --result)."""
    p.add_argument("--sides", default="stock,ours")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--root", type=Path, default=root)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--label", default="", help="a name for this tree/version in the JSON")
    p.add_argument("--child", choices=["ours", "stock"], help=argparse.SUPPRESS)
    p.add_argument(f"--{item}", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)


def ratio(a: Any, b: Any) -> float | None:
    return (
        round(a / b, 3) if isinstance(a, int | float) and isinstance(b, int | float) and b else None
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="mistral-7b", choices=sorted(SHAPES))
    p.add_argument("--cases", default="qlora,lora")
    p.add_argument("--rows", type=int, default=180)
    p.add_argument(
        "--profile-steps",
        type=int,
        default=0,
        help="train this many more steps after the timed ones, each under torch.profiler",
    )
    side_by_side_args(p, "case", steps=40, root=Path("/tmp/product-bench"))
    a = p.parse_args()
    if a.child == "ours":
        return child_ours(a.case, a.steps, a.root, a.result, a.profile_steps)
    if a.child == "stock":
        return child_stock(a.case, a.steps, a.root, a.result, a.profile_steps)

    import torch

    cuda = torch.cuda.is_available()
    pvc = a.root / "pvc"
    model_dir = pvc / "models" / "model"
    t0 = time.perf_counter()
    if not (model_dir / "config.json").exists():  # reused: every side trains the same weights
        build_model_dir(a.model, model_dir, "cuda" if cuda else "cpu")
        if cuda:
            torch.cuda.empty_cache()
    if not (pvc / "data" / "quotes.jsonl").exists():
        write_rows(pvc / "data" / "quotes.jsonl", a.rows)
    setup_s = time.perf_counter() - t0
    failed = False
    for case in a.cases.split(","):
        # an optimizer step of batch x accumulation rows: as many steps as the rows allow
        steps = min(a.steps, a.rows // (4 * case_parts(case)[1]))
        sides = {
            s: run_side(s, case, steps, a.root, cuda, a.profile_steps) for s in a.sides.split(",")
        }
        line: dict[str, Any] = {
            "label": a.label,
            "model": a.model,
            "case": case,
            "steps": steps,
            "rows": a.rows,
            "setup_s": setup_s,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__,
            **sides,
        }
        s = sides.get("stock", {})
        line["ratios"], line["loss_diff"] = {}, {}
        for name, o in sides.items():
            if not name.startswith("ours") or not s:
                continue
            line["ratios"][name] = {
                k: ratio(o.get(k), s.get(k))
                for k in (
                    "tok_s_from_start",
                    "tok_s_after_warmup",
                    "max_memory_reserved_gib",
                    "nvidia_smi_process_peak_mib",
                )
            }
            pairs = list(zip(o.get("losses", []), s.get("losses", []), strict=False))
            if pairs:
                diffs = [abs(x - y) for x, y in pairs]
                line["loss_diff"][name] = {
                    "step1": diffs[0],
                    "max": max(diffs),
                    "mean": sum(diffs) / len(diffs),
                }
        failed |= any(v.get("exit_code") for v in sides.values())
        text = json.dumps(line)
        if a.out:
            with a.out.open("a") as f:
                f.write(text + "\n")
        brief = {k: line.get(k) for k in ("case", "ratios", "loss_diff")}
        for side, v in sides.items():
            brief[side] = {
                k: v.get(k)
                for k in (
                    "exit_code",
                    "tok_s_from_start",
                    "tok_s_after_warmup",
                    "max_memory_reserved_gib",
                    "nvidia_smi_process_peak_mib",
                )
            }
            profs = [q for q in v.get("profiles", []) if "error" not in q]
            if profs:
                brief[side]["profile_mean"] = {
                    k: sum(q[k] for q in profs) / len(profs)
                    for k in ("wall_s", "gpu_kernel_s", "gpu_busy_fraction", "syncs")
                }
        print(json.dumps(brief), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
