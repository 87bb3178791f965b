#!/usr/bin/env python3
"""QLoRA SFT of a Llama-style model through the kubetune trainer's own code path.

Builds a model directory from a config (random weights, a byte-level BPE tokenizer trained
here), writes a JSONL text dataset, runs `kubetune-train --config ... --output-dir ...` as a
subprocess (model and data read as PVC sources, artifacts written to a local directory in the
S3 layout), samples the GPU's memory while it runs, then loads the merged model and runs a
forward pass and a short generation. Prints one JSON line.

    python bench/trainer_e2e.py --model 1b --method qlora --steps 50     # on a GPU
    python bench/trainer_e2e.py --model tiny --method lora --steps 3     # CPU wiring check
    python bench/trainer_e2e.py --model 1b --method full --strategy fsdp --nproc-per-node 1
        # the pod's launcher path (torchrun), here FSDP at world size 1 (docs/scaling.md)
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

WORDS = [
    "the",
    "model",
    "learns",
    "to",
    "answer",
    "questions",
    "about",
    "data",
    "training",
    "kubernetes",
    "operator",
    "cluster",
    "node",
    "pod",
    "job",
    "adapter",
    "weights",
    "tokens",
    "batch",
    "memory",
    "speed",
    "loss",
    "step",
    "epoch",
    "value",
    "rank",
    "alpha",
    "instruction",
    "response",
    "user",
    "assistant",
    "system",
    "please",
    "explain",
    "why",
    "how",
    "what",
    "when",
    "where",
]


def build_model_dir(model: str, dest: Path, device: str) -> None:
    import torch
    from kubetune_trainer.testing.tiny import build_llama_tokenizer
    from trainer_bench_cases import MODELS
    from trainer_bench_model import llama_config
    from transformers import AutoModelForCausalLM

    tok = build_llama_tokenizer()
    cfg = llama_config(MODELS[model], "sdpa")
    # Seeded: the 2026-12-04 A/B built one unseeded model per version and read the different
    # random weights as a loss change of the code (step-1 losses differed before any update).
    torch.manual_seed(0)
    cfg.vocab_size = max(cfg.vocab_size, len(tok))
    with torch.device(device):
        m = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    m.save_pretrained(dest)
    tok.save_pretrained(dest)


def write_rows(path: Path, n: int, seed: int) -> None:
    """Text rows of about 300 BPE tokens on average (lognormal word counts, long tail)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.clip(rng.lognormal(math.log(150) - 0.405, 0.9, n), 8, 1000).astype(int)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for k in words:
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS, k))}) + "\n")


def gpu_memory_sampler(samples: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout
            samples.append(int(out.split()[0]))
        except Exception:
            pass
        stop.wait(0.5)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="1b")
    p.add_argument("--method", default="qlora")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--root", type=Path, default=Path("/tmp/kubetune-e2e"))
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--nproc-per-node",
        type=int,
        default=None,
        help="start the trainer through its launcher (torchrun) with this many processes, as "
        "the pod does for resources.gpus > 1 or strategy fsdp",
    )
    p.add_argument("--strategy", default="auto", choices=["auto", "ddp", "fsdp"])
    a = p.parse_args()

    import torch
    from kubetune_trainer.testing.harness import trainer_config

    cuda = torch.cuda.is_available()
    root = a.root
    pvc = root / "pvc"
    t0 = time.perf_counter()
    if not (pvc / "models" / "llama" / "config.json").exists():  # reused across runs
        build_model_dir(a.model, pvc / "models" / "llama", "cuda" if cuda else "cpu")
        write_rows(pvc / "data" / "train.jsonl", a.rows, seed=0)
    setup_s = time.perf_counter() - t0
    spec: dict[str, Any] = {
        "task": "causal-lm",
        "model": {"pvc": {"claimName": "models", "path": "/llama"}},
        "dataset": {
            "pvc": {"claimName": "data", "path": "/train.jsonl"},
            "format": "text",
            "maxSeqLength": 2048,
        },
        "method": {"type": a.method},
        "hyperparameters": {
            "maxSteps": a.steps,
            "batchSize": a.batch_size,
            "gradientCheckpointing": a.method == "qlora",
            "loggingSteps": 10,
            "saveStrategy": "no",
        },
        "resources": {"gpus": 1 if cuda else 0, "distribution": {"strategy": a.strategy}},
        "output": {"uri": "s3://bench/out", "checkpoints": False},
        "tracking": {"reportTo": []},
    }
    cfg = trainer_config(spec, name="e2e", work_dir=root / "work")
    (root / "config.json").write_text(json.dumps(cfg))
    env = dict(os.environ)
    env["KUBETUNE_PVC_ROOT"] = str(pvc)
    env["KUBETUNE_TERMINATION_LOG"] = str(root / "termination.json")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "trainer-image"), *filter(None, [env.get("PYTHONPATH")])]
    )
    cmd = [
        sys.executable,
        "-m",
        "kubetune_trainer",
        "--config",
        str(root / "config.json"),
        "--output-dir",
        str(root / "artifacts"),
    ]
    if a.nproc_per_node is not None:
        cmd += ["--nproc-per-node", str(a.nproc_per_node)]
    import shutil

    shutil.rmtree(root / "artifacts", ignore_errors=True)  # each run's merged model alone
    samples: list[int] = []
    stop = threading.Event()
    sampler = threading.Thread(target=gpu_memory_sampler, args=(samples, stop), daemon=True)
    if cuda:
        sampler.start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    stop.set()
    log_tail = (proc.stdout + proc.stderr)[-4000:]
    term = root / "termination.json"
    result: dict[str, Any] = {
        "command": " ".join(cmd),
        "exit_code": proc.returncode,
        "trainer_wall_s": wall,
        "setup_s": setup_s,
        "termination": json.loads(term.read_text()) if term.exists() else None,
        "gpu_memory_used_peak_mib": max(samples) if samples else None,
        "train_log": [
            ln
            for ln in (proc.stdout + proc.stderr).splitlines()
            if any(
                w in ln
                for w in ("tok/s", "speed", "loaded", "trainable", "distribution", "launching")
            )
        ][-14:],
    }
    merged = root / "artifacts" / "bench" / "out" / "default" / "e2e" / "run-1" / "merged"
    result["merged_files"] = sorted(p.name for p in merged.glob("*")) if merged.is_dir() else []
    if proc.returncode == 0 and merged.is_dir():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(
            merged, dtype=torch.bfloat16, device_map={"": 0} if cuda else None
        )
        tok = AutoTokenizer.from_pretrained(merged)
        ids = tok("the model learns", return_tensors="pt").to(model.device)
        with torch.no_grad():
            loss = model(**ids, labels=ids["input_ids"]).loss.item()
            gen = model.generate(**ids, max_new_tokens=8, do_sample=False)
        result["merged_load"] = {
            "ok": math.isfinite(loss),
            "class": type(model).__name__,
            "dtype": str(next(model.parameters()).dtype),
            "params": sum(p.numel() for p in model.parameters()),
            "forward_loss": loss,
            "generated_tokens": int(gen.shape[1] - ids["input_ids"].shape[1]),
            "load_s": time.perf_counter() - t0,
        }
    else:
        result["log_tail"] = log_tail
    line = json.dumps(result)
    print(line)
    if a.out:
        with a.out.open("a") as f:
            f.write(line + "\n")
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
