"""bench/example_bench.py (issue 13 floor 3): every single-GPU example has a row, each row's
kubetune spec is the example's own (validated as the operator would), each stock script trains
the same settings (checked on the built Trainer and PEFT config, tiny models on CPU), and the
table script renders results and failures."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
for p in (REPO / "api", REPO / "trainer-image", BENCH):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

eb: Any = importlib.import_module("example_bench")
table: Any = importlib.import_module("examples_table")


def _example(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / "examples" / f"{name}.yaml").read_text())["spec"]


def test_every_single_gpu_example_has_a_row_or_a_reason() -> None:
    single = {
        p.stem
        for p in (REPO / "examples").glob("*.yaml")
        if (yaml.safe_load(p.read_text())["spec"].get("resources") or {}).get("gpus") == 1
    }
    rows = {r.example for r in eb.ROWS.values()}
    assert single - rows == set(eb.NOT_BENCHED)
    assert rows <= single  # no row for an example that is not single-GPU


@pytest.mark.parametrize("row", list(eb.ROWS))
def test_row_spec_is_the_examples_training_spec(row: str) -> None:
    from kubetune_trainer.testing.harness import trainer_config

    spec = eb.example_spec(row, 20, cuda=True)
    trainer_config(spec, name="x", work_dir="/tmp/x")  # valid as the operator writes it
    ex = _example(eb.ROWS[row].example)
    assert spec["method"] == ex["method"]
    assert spec["task"] == ex["task"]
    for k in ("format", "maxSeqLength", "packing", "fields", "textTemplate", "assistantOnlyLoss"):
        assert spec["dataset"].get(k) == ex["dataset"].get(k), k
    keep = {k: v for k, v in ex["hyperparameters"].items() if "eval" not in k.lower()}
    for k in ("earlyStopping", "saveStrategy", "saveSteps", "saveTotalLimit"):
        keep.pop(k, None)
    assert {k: spec["hyperparameters"][k] for k in keep} == keep
    assert spec["hyperparameters"]["maxSteps"] == 20
    assert spec["model"] == {"pvc": {"claimName": "models", "path": f"/{eb.ROWS[row].shape}"}}


def _lora_targets(cfg: Any) -> list[str]:
    t = cfg.target_modules
    return [t] if isinstance(t, str) else sorted(t)


@pytest.mark.slow
@pytest.mark.parametrize("row", list(eb.ROWS))
def test_stock_script_trains_the_examples_settings(row: str, tmp_path: Path) -> None:
    """The stock Trainer, built on a tiny model of the row's architecture, carries the example's
    batch, accumulation, learning rate, schedule, length, packing, loss masking, checkpointing
    and adapter settings."""
    import stock_examples

    r = eb.ROWS[row]
    model_dir, data = tmp_path / "model", tmp_path / r.data
    eb.build_model_dir(r.shape, eb.TINY[r.shape], model_dir, "cpu")
    eb.write_data(r.data, data, 24)
    trainer = stock_examples.build(row, model_dir, data, 3, tmp_path / "out")
    ex = _example(r.example)
    h, d, m = ex["hyperparameters"], ex["dataset"], ex["method"]
    args = trainer.args
    assert args.per_device_train_batch_size == h["batchSize"]
    assert args.gradient_accumulation_steps == h.get("gradientAccumulationSteps", 1)
    assert args.learning_rate == pytest.approx(h["learningRate"])
    assert str(args.lr_scheduler_type.value) == h.get("lrScheduler", "linear")
    assert args.max_steps == 3
    checkpointing = getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing
    if m["type"] != "qlora":  # the seed's k-bit preparation checkpoints inside the model
        assert bool(checkpointing) == h.get("gradientCheckpointing", False)
    if ex["task"] == "causal-lm":
        assert args.max_length == d["maxSeqLength"]
        assert bool(args.packing) == d.get("packing", False)
        assert bool(args.assistant_only_loss) == d.get("assistantOnlyLoss", False)
        if d["format"] == "prompt-completion" and "completionOnlyLoss" in d:
            assert args.completion_only_loss == d["completionOnlyLoss"]
    if m["type"] == "full":
        assert not hasattr(trainer.model, "peft_config")
        assert all(p.requires_grad for p in trainer.model.parameters())
        return
    peft_cfg = trainer.model.peft_config["default"]
    if m["type"] in ("lora", "qlora", "dora"):
        lora = m["lora"]
        assert peft_cfg.r == lora["r"]
        assert peft_cfg.lora_alpha == lora["alpha"]
        assert peft_cfg.lora_dropout == lora.get("dropout", 0.05)
        assert bool(peft_cfg.use_dora) == (m["type"] == "dora")
        from kubetune_trainer.methods import DEFAULT_LORA_TARGETS

        want = lora.get("targetModules")
        leaves = sorted({t.rsplit(".", 1)[-1] for t in _lora_targets(peft_cfg)})
        if want == ["all-linear"]:  # peft expands it: every projection, not the LM head
            assert leaves == sorted(DEFAULT_LORA_TARGETS["llama"])
        elif want:
            assert leaves == sorted(want)
        else:  # kubetune's default for Llama-like models
            assert leaves == sorted(DEFAULT_LORA_TARGETS["llama"])
        if lora.get("modulesToSave"):
            assert set(lora["modulesToSave"]) <= set(peft_cfg.modules_to_save)
    elif m["type"] == "prompt-tuning":
        pt = m["promptTuning"]
        assert peft_cfg.num_virtual_tokens == pt["numVirtualTokens"]
        assert peft_cfg.prompt_tuning_init_text == pt["initText"]


@pytest.mark.slow
def test_cpu_run_trains_both_sides_and_writes_a_table_row(tmp_path: Path) -> None:
    """The bench's own entry point, one row, tiny model: both child processes train, the JSON
    line has both sides' steps and losses, and the table script renders it."""
    out = tmp_path / "r.jsonl"
    proc = subprocess.run(
        [
            *(sys.executable, str(BENCH / "example_bench.py"), "--model", "tiny", "--steps", "2"),
            *("--rows", "bert-lora", "--root", str(tmp_path / "root"), "--out", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (line,) = [json.loads(t) for t in out.read_text().splitlines()]
    for side in ("stock", "ours"):
        assert line[side]["exit_code"] == 0
        assert line[side]["steps_done"] == 2
        assert line[side]["real_tokens"] > 0
    # same model, same rows, same first batch: the same first loss
    assert line["loss_diff"]["step1"] < 1e-3
    rendered = table.render([line])
    assert "`bert-lora-classifier.yaml`" in rendered and "| tiny | 2 |" in rendered


def test_table_marks_slower_rows_and_failed_sides() -> None:
    ok = {
        "row": "bert-lora",
        "example": "examples/bert-lora-classifier.yaml",
        "model": "bert-base-uncased",
        "steps": 20,
        "stock": {"exit_code": 0, "tok_s_from_start": 1000.0, "tok_s_after_warmup": 1100.0},
        "ours": {"exit_code": 0, "tok_s_from_start": 1500.0, "tok_s_after_warmup": 1050.0},
        "ratios": {"tok_s_from_start": 1.5, "tok_s_after_warmup": 0.955},
        "loss_diff": {"step1": 0.0001, "max": 0.002},
    }
    failed = {
        "row": "chat-sft",
        "example": "examples/chat-messages-sft.yaml",
        "stock": {"exit_code": 0, "tok_s_from_start": 10.0},
        "ours": {"exit_code": 1},
        "ratios": {"tok_s_from_start": None},
    }
    rows = table.render([ok, failed]).splitlines()
    assert rows[2].endswith("| **no** |")  # slower after warm-up: floor 3 missed
    assert "1.50x / 0.95x" in rows[2]
    assert "| exit 1 |" in rows[3]
