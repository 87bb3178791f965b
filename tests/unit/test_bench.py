"""bench/trainer_bench.py and bench/step_profile.py: case parsing, the `next` suite, the profile summary of a GPU step (from
synthetic profiler events: there is no GPU here), and real CPU runs of the tiny model through
the bench's own entry point (driver process -> one worker process per case)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "trainer_bench.py"
CPU_CASE = "model=tiny,variant=ours,device=cpu,seq_len=128,micro_batch=4,grad_accum=1,attn=sdpa,liger=false"


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("trainer_bench", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(tmp_path: Path, *args: str, timeout: float = 240) -> list[dict[str, Any]]:
    """Run the bench's CLI; the JSON lines it prints (one per case, or per listed case)."""
    proc = subprocess.run(
        [sys.executable, str(BENCH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "BENCH_WORKDIR": str(tmp_path)},
    )
    results = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert results, proc.stdout[-2000:] + proc.stderr[-4000:]
    for r in results:
        assert "error" not in r, r["error"]
    assert proc.returncode == 0, proc.stderr[-4000:]
    return results


def test_parse_case_new_keys() -> None:
    b = _bench()
    c = b.parse_case(
        "model=8b,method=qlora,variant=ours-x,compile=regional,kbit_prep=peft,offload=true,"
        "profile_steps=2,optim=paged_adamw_8bit,lora_dropout=0.1,dtype=bf16,input_cast=false"
    )
    assert c["compile"] == "regional"
    assert c["kbit_prep"] == "peft"
    assert c["offload"] is True
    assert c["profile_steps"] == 2 and isinstance(c["profile_steps"], int)
    assert c["optim"] == "paged_adamw_8bit"
    assert c["lora_dropout"] == 0.1
    assert c["dtype"] == "bf16"
    assert c["input_cast"] is False
    assert c["padding_free"] is True  # ours' defaults underneath
    assert b.parse_case("compile=true")["compile"] is True
    assert b.parse_case("compile=false")["compile"] is False
    d = b.parse_case("model=1b")
    for key in ("profile_steps", "offload", "kbit_prep", "optim", "lora_dropout", "compile"):
        assert d[key] == b.DEFAULT_CASE[key]
    with pytest.raises(SystemExit):
        b.parse_case("kbit_prep=fp32")
    with pytest.raises(SystemExit):
        b.parse_case("compile=maybe")


def test_next_suites() -> None:
    b = _bench()
    for name, model in (("next", "8b"), ("next-1b", "1b")):
        cases = b.suite(name)
        assert len(cases) == 10
        assert all(c["liger"] is False for c in cases)
        # the QLoRA memory ratios need the baseline in the same run, over the same steps and rows
        qlora = [c for c in cases if c["method"] == "qlora"]
        assert qlora[0]["variant"] == "baseline"
        assert {(c["steps"], c["warmup"], c["seed"]) for c in qlora} == {(12, 5, 42)}
        assert all(c["model"] == model for c in cases)
        variants = [(c["method"], c["variant"]) for c in cases]
        assert len(set(variants)) == len(variants)
        assert all(set(c) == set(b.DEFAULT_CASE) for c in cases)
        profiled = [c["method"] for c in cases if c["profile_steps"]]
        assert profiled == ["qlora", "lora"]
        assert {c["compile"] for c in cases} == {False, "regional"}
        assert any(c["offload"] for c in cases) and any(c["kbit_prep"] == "peft" for c in cases)


def test_list_prints_cases_without_running(tmp_path: Path) -> None:
    listed = _run(tmp_path, "--suite", "next", "--list", "--only", "ours-profile", timeout=60)
    assert [(c["method"], c["variant"]) for c in listed] == [
        ("qlora", "ours-profile"),
        ("lora", "ours-profile"),
    ]
    assert not list(tmp_path.iterdir())  # no worker ran


def _ev(name: str, start: float, end: float, cuda: bool = False, **kw: Any) -> SimpleNamespace:
    ev = SimpleNamespace(
        name=name,
        device_type="DeviceType.CUDA" if cuda else "DeviceType.CPU",
        time_range=SimpleNamespace(start=start, end=end),
        self_cpu_time_total=0.0 if cuda else end - start,
        cpu_parent=None,
        is_user_annotation=False,
    )
    ev.__dict__.update(kw)
    return ev


def test_profile_summary_of_a_gpu_step() -> None:
    """Kernels, launches, syncs (one .item(); the bench's and the profiler's own syncs left out),
    and a record_function range mirrored on the GPU timeline that must not count as a kernel."""
    _bench()  # puts bench/ on sys.path
    import step_profile as b

    item = _ev("aten::item", 0, 100)
    dense = _ev("aten::_local_scalar_dense", 10, 90, cpu_parent=item)
    mm = _ev("aten::mm", 100, 150)
    mul = _ev("aten::mul", 150, 170)
    marker = _ev(b.BENCH_SYNC, 200, 300)
    events = [
        item,
        dense,
        _ev("cudaMemcpyAsync", 20, 30, cpu_parent=dense),
        _ev("cudaStreamSynchronize", 30, 80, cpu_parent=dense),
        mm,
        _ev("cudaLaunchKernel", 110, 120, cpu_parent=mm),
        mul,
        _ev("cudaLaunchKernel", 155, 158, cpu_parent=mul),
        _ev("Optimizer.step#AdamW.step", 120, 180),
        marker,
        _ev("cudaDeviceSynchronize", 210, 290, cpu_parent=marker),
        _ev("cudaDeviceSynchronize", 310, 320),  # the profiler's own, at stop()
        _ev("Memcpy DtoH (Device -> Pinned)", 40, 45, cuda=True),
        _ev("ampere_bf16_s16816gemm_bf16_128x128", 115, 140, cuda=True),
        _ev("void at::native::vectorized_elementwise_kernel", 159, 164, cuda=True),
        _ev("Optimizer.step#AdamW.step", 130, 200, cuda=True),
        _ev(b.BENCH_SYNC, 205, 206, cuda=True, is_user_annotation=True),
    ]
    s = b.profile_summary(events, wall_s=400e-6)
    assert s["gpu_kernel_s"] == pytest.approx(30e-6)
    assert s["gpu_busy_fraction"] == pytest.approx(30 / 400)
    assert s["gpu_active_s"] == pytest.approx(35e-6)
    assert s["gpu_memcpy_s"] == pytest.approx(5e-6)
    assert s["kernel_launches"] == 2
    assert s["syncs"] == 1
    assert s["syncs_by_call"] == {"cudaStreamSynchronize": 1}
    assert s["sync_ops"] == {"aten::item > aten::_local_scalar_dense": 1}
    assert s["dtoh_copies"] == 1
    assert s["cpu_op_count"] == 4
    assert [k["name"] for k in s["top_kernels"]] == [
        "ampere_bf16_s16816gemm_bf16_128x128",
        "void at::native::vectorized_elementwise_kernel",
    ]
    assert s["top_kernels"][0] == {
        "name": "ampere_bf16_s16816gemm_bf16_128x128",
        "count": 1,
        "total_s": pytest.approx(25e-6),
    }
    assert s["top_cpu_ops"][0]["name"] == "aten::item"


@pytest.mark.slow
def test_cpu_run_with_profile(tmp_path: Path) -> None:
    """3 measured steps, then 1 profiled step: the profiled step is in `profile` only, and the
    measured steps' losses are those of the same case without profiling."""
    base = f"{CPU_CASE},method=lora,steps=3,warmup=1"
    profiled, plain = _run(tmp_path, "--case", f"{base},profile_steps=1", "--case", base)
    for r in (profiled, plain):
        assert r["steps_done"] == 3
        assert r["tokens_per_s"] > 0
        assert len(r["losses"]) == 3
    assert profiled["losses"] == plain["losses"]
    assert profiled["real_tokens_per_step_mean"] == plain["real_tokens_per_step_mean"]
    assert profiled["profiled_steps_done"] == 1
    assert len(profiled["profile_losses"]) == 1
    prof = profiled["profile"]
    assert [s["step"] for s in prof["steps"]] == [4]
    step = prof["steps"][0]
    assert "error" not in step
    assert step["wall_s"] > 0 and step["cpu_op_count"] > 0
    assert step["top_kernels"] and all(k["name"].startswith("aten::") for k in step["top_kernels"])
    assert step["gpu_kernel_s"] == 0 and step["kernel_launches"] == 0 and step["syncs"] == 0
    assert prof["summary"]["cpu_op_count"] == step["cpu_op_count"]
    assert "profile" not in plain
    assert plain["param_bytes_by_dtype"] == {"float32": plain["param_bytes_by_dtype"]["float32"]}
    assert 0 < plain["trainable_param_bytes"] < plain["param_bytes_by_dtype"]["float32"]


@pytest.mark.slow
def test_cpu_qlora_kbit_prep_peft_upcasts_to_fp32(tmp_path: Path) -> None:
    """bf16 weights on CPU so the difference shows: SFTTrainer alone keeps the embedding, norms
    (and the tied LM head) in bf16; peft's prepare_model_for_kbit_training makes them fp32."""
    base = f"{CPU_CASE},method=qlora,steps=2,warmup=1,dtype=bf16"
    none, peft = _run(
        tmp_path,
        "--case",
        f"{base},kbit_prep=none",
        "--case",
        f"{base},kbit_prep=peft,input_cast=false",
    )
    assert none["param_bytes_by_dtype"].get("float32", 0) == 0
    assert peft["param_bytes_by_dtype"]["float32"] > 0
    assert none["param_bytes_by_dtype"]["uint8"] == peft["param_bytes_by_dtype"]["uint8"] > 0
    assert none["trainable_param_bytes"] == peft["trainable_param_bytes"] > 0
    assert peft.get("kbit_prep_applied") is True and "kbit_prep_applied" not in none
    assert none["steps_done"] == peft["steps_done"] == 2
    # input_cast=false reaches every LoRA layer (2 layers x 7 projections of the tiny model)
    assert peft["input_cast_disabled_layers"] == 14 and "input_cast_disabled_layers" not in none
