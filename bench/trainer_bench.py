#!/usr/bin/env python3
"""Trainer throughput benchmark: the common SFT recipe (baseline) against kubetune's defaults.

Kernel-level ablations only. Its "ours" rebuilds the trainer's recipe from the same switches
instead of running the trainer, so it is not a product measurement (issue 16 point 6): the
product against the seed's script is bench/product_bench.py, which runs kubetune-train itself.

The cases and suites are in trainer_bench_cases.py, the synthetic model and data in
trainer_bench_model.py; this file runs a case (worker) and drives the processes.

One process per case: the driver spawns `python bench/trainer_bench.py --worker '<case json>'`
for each case, so no case inherits another's allocator state, compiled kernels or monkey
patches, and prints one JSON line per case (also appended to `--out`).

Each case trains `steps` optimizer steps with trl's SFTTrainer on synthetic, pre-tokenized data
and reports tokens/s after `warmup` steps (real, non-pad tokens), MFU, peak GPU memory during
training, step-time percentiles and the loss of every step. See docs/benchmarks.md for the
formulas, the data distribution and the results.

With `profile_steps=N` a case trains N more optimizer steps after its `steps` and runs
torch.profiler over each of them (one profiler session per step): the result's `profile` holds,
per profiled step, the wall time, the summed GPU kernel time, kernel launches, host-device syncs,
aten op count and the top kernels (top aten ops on CPU), i.e. whether a step is CPU- or GPU-bound.
The profiled steps are not part of tokens/s, the step-time stats or `losses`.

Examples:
    python bench/trainer_bench.py --suite smoke --device cpu        # tiny model, CPU, checks wiring
    python bench/trainer_bench.py --suite next --list               # print a suite's cases, run none
    python bench/trainer_bench.py --suite next --timeout 300 --out /tmp/next.jsonl   # on a GPU
    python bench/trainer_bench.py --suite 1b --out /tmp/1b.jsonl     # on a GPU
    python bench/trainer_bench.py --case model=1b,method=qlora,variant=ours
    python bench/trainer_bench.py --case model=8b,method=lora,variant=ours-p,profile_steps=2
    python bench/trainer_bench.py --case model=1b,method=lora,variant=ours-r,compile=regional
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO / "trainer-image"))

from step_profile import bench_sync, profile_overview, profile_summary  # noqa: E402
from trainer_bench_cases import (  # noqa: E402
    CHOICES,
    DEFAULT_CASE,
    LORA_TARGETS,
    MODELS,
    SUITES,
    parse_case,
    suite,
)
from trainer_bench_model import (  # noqa: E402
    build_model,
    matmul_params,
    param_bytes,
    synthetic_rows,
    tiny_tokenizer,
    use_bf16,
    verify_quantization,
)

H100_BF16_DENSE_PEAK = 989e12  # FLOP/s, H100 SXM dense bf16 (datasheet)
RESULT_PREFIX = "BENCH_RESULT "

# ---------------------------------------------------------------------------------------------
# Worker: one case
# ---------------------------------------------------------------------------------------------


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Train one case and measure it.

    With profile_steps = P > 0 the trainer runs steps + P optimizer steps: the first `steps` are
    measured as without profiling (tokens/s, step times, `losses`); each of the P steps after
    them runs under its own torch.profiler session, from one on_step_end to the next (the same
    window as the step times: batch fetch, forward/backward of every micro-batch, optimizer, and
    the trainer's logging of the step before) and goes only into `profile` (and
    `profile_losses`). The dataset keeps `steps` optimizer steps of rows, so the profiled steps
    are the start of a second epoch and the measured steps see the same rows in the same order
    as an unprofiled run; the learning-rate schedule is kept over `steps` (the profiled steps run
    at lr 0), so `losses` match an unprofiled run's too."""
    import numpy as np
    import torch
    from datasets import Dataset
    from kubetune_trainer import speed
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    case = {**DEFAULT_CASE, **case}
    for key, allowed in CHOICES.items():
        if case[key] not in allowed:
            raise ValueError(f"{key}={case[key]!r}: one of {allowed}")
    workdir = Path(os.environ.get("BENCH_WORKDIR", "/tmp/kubetune-bench")) / str(os.getpid())
    workdir.mkdir(parents=True, exist_ok=True)
    cuda = case["device"] == "cuda"
    n_steps, n_prof = case["steps"], case["profile_steps"]
    result: dict[str, Any] = {"case": case}
    if case["attn"] == speed.VARLEN_ATTENTION:
        if not speed.register_varlen_attention():
            raise RuntimeError("kubetune_varlen attention could not be registered")
        result["varlen_gqa_native"] = speed._GQA_NATIVE

    shape = MODELS[case["model"]]
    model, timings = build_model(case, workdir)
    result["timings"] = timings
    if case["liger"]:
        result["liger_applied"] = speed.apply_liger(model)
    if case["method"] == "qlora" and case["kbit_prep"] == "peft":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=case["grad_ckpt"])
        result["kbit_prep_applied"] = True

    rows_needed = n_steps * case["micro_batch"] * case["grad_accum"]
    rows = synthetic_rows(rows_needed, case["seq_len"], shape["vocab_size"], seed=1234)
    dataset = Dataset.from_dict({"input_ids": rows})

    from peft import LoraConfig

    peft_config = None
    if case["method"] in ("lora", "qlora"):
        peft_config = LoraConfig(
            r=16,
            lora_alpha=32,
            lora_dropout=case["lora_dropout"],
            target_modules=LORA_TARGETS,
            bias="none",
            task_type="CAUSAL_LM",
        )

    args = SFTConfig(
        output_dir=str(workdir / "out"),
        max_steps=n_steps + n_prof,
        per_device_train_batch_size=case["micro_batch"],
        gradient_accumulation_steps=case["grad_accum"],
        learning_rate=case["lr"],
        lr_scheduler_type="linear",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=case["seed"],
        data_seed=case["seed"],
        bf16=use_bf16(case),
        use_cpu=not cuda,
        gradient_checkpointing=case["grad_ckpt"],
        padding_free=case["padding_free"],
        # trl refuses max_length with padding-free and no packing; the rows are already clipped.
        max_length=None if case["padding_free"] else case["seq_len"],
        torch_compile=case["compile"] is True,
        activation_offloading=case["offload"],
        dataloader_num_workers=0,
        disable_tqdm=True,
        optim=case["optim"],
    )
    t0 = time.perf_counter()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tiny_tokenizer(),
        peft_config=peft_config,
    )
    timings["trainer_init_s"] = time.perf_counter() - t0
    result["param_bytes_by_dtype"], result["trainable_param_bytes"] = param_bytes(trainer.model)

    # Regional compilation: each decoder layer on its own (after PEFT wrapping and checkpointing
    # setup, so the LoRA layers are inside), dynamic shapes for the varying token counts.
    compiled = 0
    if case["compile"] == "regional":
        import torch._dynamo

        # the layers share one forward; never fall back to eager for lack of cache entries
        torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
        tuned: Any = trainer.model
        for module in tuned.modules():
            if type(module).__name__.endswith("DecoderLayer"):
                module.compile(dynamic=True)
                compiled += 1
        if not compiled:
            raise RuntimeError("compile=regional: no *DecoderLayer module found")
    result["compiled_layers"] = compiled
    if not case["input_cast"]:
        peft_model: Any = trainer.model
        lora_layers = [m for m in peft_model.modules() if hasattr(m, "cast_input_dtype_enabled")]
        for m in lora_layers:
            m.cast_input_dtype_enabled = False
        result["input_cast_disabled_layers"] = len(lora_layers)

    if n_prof:
        # Keep the schedule over the measured steps (see the docstring); the profiled ones
        # then run at lr 0: the same kernels, no change to what the measured steps saw.
        create_scheduler = trainer.create_scheduler

        def measured_schedule(num_training_steps: int, optimizer: Any = None) -> Any:
            return create_scheduler(num_training_steps=n_steps, optimizer=optimizer)

        trainer.create_scheduler = measured_schedule  # type: ignore[method-assign]

    # Count what each micro-batch really holds: the rows' lengths (real tokens) and the padded
    # size. Micro-batches arrive in order, `grad_accum` per optimizer step.
    micro: list[tuple[list[int], int]] = []
    collate = trainer.data_collator

    def counting_collator(examples: list[dict[str, Any]]) -> Any:
        batch = collate(examples)
        micro.append(([len(e["input_ids"]) for e in examples], int(batch["input_ids"].numel())))
        return batch

    trainer.data_collator = counting_collator
    # The dataloader is built lazily from trainer.data_collator in get_train_dataloader.

    losses: list[float] = []
    step_ends: list[float] = []

    class Timer(TrainerCallback):
        def on_train_begin(self, *a: Any, **k: Any) -> None:
            bench_sync(cuda)
            step_ends.append(time.perf_counter())

        def on_step_end(self, *a: Any, **k: Any) -> None:
            bench_sync(cuda)
            step_ends.append(time.perf_counter())

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **k: Any) -> None:
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    profiled: list[dict[str, Any]] = []
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    class StepProfiler(TrainerCallback):
        """One profiler session per profiled step, on_step_end to on_step_end (added after
        Timer, so a window ends after Timer's sync and starts after Timer's time stamp)."""

        prof: Any = None
        t0 = 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **k: Any) -> None:
            step = state.global_step
            if self.prof is not None:
                entry: dict[str, Any] = {"step": step}
                try:
                    bench_sync(cuda)
                    wall = time.perf_counter() - self.t0
                    self.prof.stop()
                    t = time.perf_counter()
                    entry.update(profile_summary(self.prof.events(), wall))
                    entry["analysis_s"] = time.perf_counter() - t
                except Exception as e:  # a profiler failure must not cost the case
                    entry["error"] = f"{type(e).__name__}: {e}"
                profiled.append(entry)
                self.prof = None
            if n_steps <= step < n_steps + n_prof:
                try:
                    self.prof = torch.profiler.profile(activities=activities)
                    self.prof.start()
                except Exception as e:
                    profiled.append({"step": step + 1, "error": f"{type(e).__name__}: {e}"})
                    self.prof = None
                    return
                bench_sync(cuda)
                self.t0 = time.perf_counter()

    trainer.add_callback(Timer())
    if n_prof:
        trainer.add_callback(StepProfiler())
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        result["memory_before_train_gib"] = torch.cuda.memory_allocated() / 2**30
    t0 = time.perf_counter()
    trainer.train()
    result["train_wall_s"] = time.perf_counter() - t0
    if cuda:
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    if case["compile"]:
        result["dynamo"] = dynamo_stats()

    # Stats over the measured steps only: the profiled ones (after them) are left out.
    steps = min(len(step_ends) - 1, n_steps)
    step_times = np.diff(step_ends)[:steps]
    ga = case["grad_accum"]
    real = [sum(sum(micro[i][0]) for i in range(s * ga, (s + 1) * ga)) for s in range(steps)]
    padded = [sum(micro[i][1] for i in range(s * ga, (s + 1) * ga)) for s in range(steps)]
    sq = [
        sum(sum(n * n for n in micro[i][0]) for i in range(s * ga, (s + 1) * ga))
        for s in range(steps)
    ]
    n, n_lora = matmul_params(trainer.model, shape)
    frozen = case["method"] in ("lora", "qlora")
    c_lin = (4 if frozen else 6) + (2 if case["grad_ckpt"] else 0)
    c_lora = 6 + (2 if case["grad_ckpt"] else 0)
    c_attn = 6 + (2 if case["grad_ckpt"] else 0)
    attn_width = shape["num_attention_heads"] * shape["head_dim"]
    w = case["warmup"]
    t_meas = float(step_times[w:].sum())
    tok_meas = sum(real[w:])
    flops = (c_lin * n + c_lora * n_lora) * tok_meas + c_attn * shape[
        "num_hidden_layers"
    ] * attn_width * sum(sq[w:])
    p50 = float(np.percentile(step_times[w:], 50))
    result.update(
        {
            "device_name": torch.cuda.get_device_name() if cuda else "cpu",
            "versions": versions(),
            "params_matmul": n,
            "params_lora": n_lora,
            "steps_done": steps,
            "tokens_per_s": tok_meas / t_meas,
            "padded_tokens_per_s": sum(padded[w:]) / t_meas,
            "padding_fraction": 1 - tok_meas / max(1, sum(padded[w:])),
            "real_tokens_per_step_mean": tok_meas / max(1, steps - w),
            "flops_per_token_linear": c_lin * n + c_lora * n_lora,
            "mfu": flops / t_meas / H100_BF16_DENSE_PEAK,
            "step_time_p50_s": p50,
            "step_time_p90_s": float(np.percentile(step_times[w:], 90)),
            "losses": losses[:steps],
        }
    )
    if n_prof:
        result["profiled_steps_done"] = len(step_ends) - 1 - steps
        result["profile_losses"] = losses[steps:]
        result["profile"] = {"steps": profiled, "summary": profile_overview(profiled, p50, ga)}
    return result


def dynamo_stats() -> dict[str, Any]:
    """torch._dynamo's counters after training: graphs compiled, graph breaks and their reasons."""
    try:
        from torch._dynamo.utils import counters

        breaks = dict(counters["graph_break"])
        return {
            "stats": {k: int(v) for k, v in counters["stats"].items()},
            "graph_breaks": int(sum(breaks.values())),
            "graph_break_reasons": {
                k[:200]: int(v) for k, v in sorted(breaks.items(), key=lambda kv: -kv[1])[:10]
            },
            "recompiles": {k[:200]: int(v) for k, v in list(counters["recompiles"].items())[:10]},
        }
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "liger-kernel"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "-"
    return out


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def summary(r: dict[str, Any]) -> str:
    c = r["case"]
    head = f"{c['model']:>4} {c['method']:<5} {c['variant']:<24}"
    if "error" in r:
        return f"{head} ERROR {r['error'].splitlines()[-1][:120] if r['error'] else ''}"
    mem = r.get("peak_allocated_gib", float("nan"))
    losses = r["losses"]
    line = (
        f"{head} {r['tokens_per_s']:>9.0f} tok/s  MFU {100 * r['mfu']:5.1f}%  "
        f"peak {mem:6.2f} GiB  p50 {r['step_time_p50_s']:.3f}s  "
        f"loss {losses[0]:.3f}->{losses[-1]:.3f}"
    )
    prof = r.get("profile", {}).get("summary")
    if prof:
        line += (
            f"  | profiled: wall {prof['wall_s']:.3f}s kernels {prof['gpu_kernel_s']:.3f}s"
            f" ({100 * prof['gpu_kernel_s_over_step_p50']:.0f}% of p50)"
            f" launches {prof['kernel_launches']:.0f} syncs {prof['syncs']:.0f}"
            f" aten {prof['cpu_op_count']:.0f}"
        )
    elif "profile" in r:
        errors = [s.get("error", "") for s in r["profile"]["steps"]]
        line += f"  | profile failed: {errors[:1]}"
    return line


def drive(cases: list[dict[str, Any]], out: Path | None, timeout: float) -> int:
    failures = 0
    for case in cases:
        t0 = time.perf_counter()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case)]
        env = dict(os.environ)
        if case.get("expandable"):
            env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
            if proc.returncode == 0 and lines:
                result = json.loads(lines[-1][len(RESULT_PREFIX) :])
            else:
                result = {"case": case, "error": (proc.stderr or proc.stdout)[-3000:]}
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
            result = {"case": case, "error": f"timeout after {timeout}s\n{err[-2000:]}"}
        result["process_wall_s"] = time.perf_counter() - t0
        failures += "error" in result
        line = json.dumps(result)
        if out is None:
            print(line, flush=True)
        print("#", summary(result), flush=True)
        if out is not None:
            with out.open("a") as f:
                f.write(line + "\n")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--suite", action="append", default=[], help=", ".join(SUITES))
    p.add_argument("--case", action="append", default=[], help="key=value,... (see DEFAULT_CASE)")
    p.add_argument("--only", default="", help="comma-separated variants to keep from the suites")
    p.add_argument("--device", default=None, help="override every case's device (cpu for checks)")
    p.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    p.add_argument("--timeout", type=float, default=900, help="seconds per case")
    p.add_argument("--list", action="store_true", help="print the cases as JSON lines, run none")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--verify-quant", default=None, help="model: compare the two QLoRA load paths")
    a = p.parse_args(argv)
    if a.verify_quant:
        line = json.dumps(verify_quantization(a.verify_quant))
        print(line, flush=True)
        if a.out is not None:
            with a.out.open("a") as f:
                f.write(line + "\n")
        return 0
    if a.worker is not None:
        result = run_case(json.loads(a.worker))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    cases = [c for s in a.suite for c in suite(s)] + [parse_case(c) for c in a.case]
    if a.only:
        keep = set(a.only.split(","))
        cases = [c for c in cases if c["variant"] in keep]
    if a.device:
        for c in cases:
            c["device"] = a.device
    if not cases:
        p.error("no cases: give --suite or --case")
    if a.list:
        for c in cases:
            print(json.dumps(c), flush=True)
        return 0
    return drive(cases, a.out, a.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
