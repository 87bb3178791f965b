"""Warm start through kubetune-train (what `spec.model.fromJob` with `artifact: adapter` makes
the operator write): run B gets run A's adapter (`baseAdapterUri`) on A's base and continues
it: B's loss before its first step is A's loss after its last (not the untrained base's), and
B's manifest records the lineage."""

from __future__ import annotations

from pathlib import Path

import pytest
from kubetune_trainer.testing import harness
from trainer_fixtures import TrainerS3, causal_spec, unique


def test_run_b_continues_run_as_adapter(
    trainer_s3: TrainerS3,
    tmp_path: Path,
) -> None:
    spec = causal_spec(trainer_s3, "lora")
    a_cfg = harness.trainer_config(spec, name=unique("warm-a"), work_dir=tmp_path / "wa")
    a = harness.run(a_cfg, tmp_path / "a")
    assert a.returncode == 0, a.output[-4000:]
    assert a.termination is not None
    a_metrics, a_art = a.termination["metrics"], a.termination["artifacts"]

    b_cfg = harness.trainer_config(spec, name=unique("warm-b"), work_dir=tmp_path / "wb")
    lineage = {
        "namespace": "default", "name": a_cfg["job"]["name"], "uid": a_cfg["job"]["uid"],
        "run": 1, "artifact": "adapter", "adapterUri": a_art["adapterUri"],
        "modelUri": spec["model"]["s3Uri"], "manifestUri": a_art["manifestUri"],
        "manifestSha256": a_art["manifestSha256"],
    }  # fmt: skip
    b_cfg.update(baseAdapterUri=a_art["adapterUri"], lineage=lineage)
    b = harness.run(b_cfg, tmp_path / "b")
    assert b.returncode == 0, b.output[-4000:]
    assert b.termination is not None
    b_metrics = b.termination["metrics"]
    print(f"\nA: {a_metrics['initial_eval_loss']:.4f} -> {a_metrics['eval_loss']:.4f}; "
          f"B: {b_metrics['initial_eval_loss']:.4f} -> {b_metrics['eval_loss']:.4f}")  # fmt: skip
    assert b_metrics["initial_eval_loss"] == pytest.approx(a_metrics["eval_loss"], rel=1e-3)
    assert abs(b_metrics["initial_eval_loss"] - a_metrics["initial_eval_loss"]) > 0.05
    assert b.lines("warm start: continuing the adapter")
    manifest = trainer_s3.json(b_cfg["runPrefix"] + "manifest.json")
    assert manifest["baseModel"]["lineage"] == lineage
    assert any(f["path"] == "adapter/adapter_model.safetensors" for f in manifest["files"])
