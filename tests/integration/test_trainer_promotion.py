"""Evaluation that decides, through kubetune-train against MinIO (issue 20 floor 2): a classifier
on the tiny BERT with a test split held out, the best epoch exported, base vs tuned scored on
the test rows, and the promotion gate. Run 1 beats nothing and is promoted (the pointer names
it); run 2 of the same job barely trains, does not beat run 1, still succeeds, and leaves the
pointer as it was."""

from __future__ import annotations

from pathlib import Path

from kubetune_trainer.testing import harness
from trainer_fixtures import TrainerS3, classification_spec, trainer_s3, unique  # noqa: F401


def test_promotion_gate_moves_the_pointer_only_for_a_better_run(
    trainer_s3: TrainerS3,  # noqa: F811
    tmp_path: Path,
) -> None:
    gate = {"metric": "accuracy", "rule": "beatPrevious"}
    spec = classification_spec(
        trainer_s3,
        "full",
        dataset={"test": {"splitFraction": 0.25}},
        evaluation={"metrics": ["accuracy", "f1", "loss"], "bestCheckpoint": {"metric": "f1"}},
        # 24 steps an epoch: enough for the tiny BERT to learn the topics (as in
        # test_trainer_classification.py), with an evaluation and a checkpoint at each epoch end
        hyperparameters={"maxSteps": None, "epochs": 5, "batchSize": 8, "learningRate": 0.001,
                         "loggingSteps": 24, "evalStrategy": None, "evalSteps": None,
                         "saveStrategy": None, "saveSteps": None},
        output={"promote": gate},
    )  # fmt: skip
    name = unique("gate")
    one = harness.trainer_config(spec, name=name, run=1, work_dir=tmp_path / "w1")
    r1 = harness.run(one, tmp_path / "r1")
    assert r1.returncode == 0, r1.output[-4000:]
    assert r1.termination is not None
    ev, promo = r1.termination["evaluation"], r1.termination["promotion"]
    print(f"\nrun 1: {ev}; {promo['message']}")
    assert set(ev) == {"accuracy", "f1", "loss"}
    assert ev["accuracy"]["tuned"] > ev["accuracy"]["base"] + 0.2  # it learned the topics
    assert promo["promoted"] is True and promo["reason"] == "Promoted"
    # the best epoch (by validation f1) is what was exported
    assert r1.termination["metrics"]["best_checkpoint_step"] > 0
    assert r1.lines("exporting the best checkpoint")
    manifest = trainer_s3.json(one["runPrefix"] + "manifest.json")
    assert manifest["evaluation"] == ev and manifest["promotion"]["promoted"] is True
    assert manifest["datasets"]["test"]["usedRows"] == 64  # a quarter of 256, held out
    pointer_uri = trainer_s3.uri("output", "default", name, "promoted", "promoted.json")
    pointer = trainer_s3.json(pointer_uri)
    assert pointer["runPrefix"] == one["runPrefix"]
    assert pointer["manifestSha256"] == r1.termination["artifacts"]["manifestSha256"]
    assert pointer["metrics"]["accuracy"] == ev["accuracy"]["tuned"]

    # Run 2 of the same job: one step at a negligible learning rate, no better than the base.
    worse = classification_spec(
        trainer_s3,
        "full",
        dataset={"test": {"splitFraction": 0.25}},
        evaluation={"metrics": ["accuracy", "f1", "loss"]},
        hyperparameters={"maxSteps": 1, "learningRate": 1e-9},
        output={"promote": gate},
    )
    two = harness.trainer_config(
        worse, name=name, run=2, uid=one["job"]["uid"], work_dir=tmp_path / "w2"
    )
    r2 = harness.run(two, tmp_path / "r2")
    assert r2.returncode == 0, r2.output[-4000:]
    assert r2.termination is not None and r2.termination["outcome"] == "Succeeded"
    promo2 = r2.termination["promotion"]
    print(f"run 2: {r2.termination['evaluation']}; {promo2['message']}")
    assert promo2["promoted"] is False and promo2["reason"] == "NotPromoted"
    assert promo2["previous"] == ev["accuracy"]["tuned"]
    assert promo2["previousRun"] == one["runPrefix"]
    assert "not promoted" in r2.termination["message"]
    assert trainer_s3.json(pointer_uri) == pointer  # unchanged
