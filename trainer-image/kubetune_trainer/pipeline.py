"""The trainer's stages, in order, over one shared Context:

resolve data → data → resolve model → load → build → train (+evaluate) → save → merge →
upload → report. Data comes first so a malformed dataset fails in seconds, before a large
model is downloaded. Each stage is a module with one job; this file only wires them.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import (
    ConfigError,
    FineTuneJobSpec,
    MethodType,
    TrainerConfig,
    method_record,
)

from . import distribute, tracking
from . import result as result_mod
from .logs import STARTUP
from .progress import ProgressReporter
from .s3 import S3, join

log = logging.getLogger("kubetune")


@dataclass
class Context:
    cfg: TrainerConfig
    work: Path
    s3: S3
    reporter: ProgressReporter
    is_main: bool = True
    model_path: Path = Path()
    metrics: dict[str, Any] = field(default_factory=dict)
    base_model: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, Any] = field(default_factory=dict)
    artifact_uris: dict[str, Any] = field(default_factory=dict)
    speed: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # shown in the final status message

    @property
    def artifacts(self) -> Path:
        return self.work / "artifacts"

    def report(self, **fields: Any) -> None:
        if self.is_main:
            log.info("stage %s", fields.get("stage", "?"))
            self.reporter.update(force=True, **fields)


def preflight(cfg: TrainerConfig) -> None:
    """Combinations the spec models accept but this trainer cannot honour."""
    spec = cfg.spec
    record = method_record(spec.method.type)
    if record.adapter and not record.mergeable and not spec.output.adapter:
        raise ConfigError(
            f"method {record.type.value} cannot be merged into the model weights; set "
            "output.adapter: true"
        )
    for r in spec.tracking.report_to:
        pkg = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboard"}[str(r)]
        if importlib.util.find_spec(pkg) is None:
            raise ConfigError(
                f"tracking.reportTo {r}: the {pkg} package is not installed in the trainer image"
            )


def _distributed() -> tuple[bool, int | None]:
    """(is the main process, local device index) under torchrun/accelerate launch or alone."""
    rank = int(os.environ.get("RANK", "0"))
    local = os.environ.get("LOCAL_RANK")
    return rank == 0, int(local) if local is not None else None


@contextlib.contextmanager
def _one_rank_at_a_time(work: Path) -> Iterator[None]:
    """Serialize the local ranks of a pod through the downloads and the data preparation: they
    share the work directory, so the first one through fetches and tokenizes, and the others
    find the files complete and the datasets cache warm. A file lock, not a collective: it holds
    before any process group exists (accelerate's main_process_first is a no-op on CPU under
    torchrun, which let two ranks race on one download), and ranks on other nodes have their
    own work directory."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / ".resolve.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _store(cfg: TrainerConfig) -> S3:
    """S3, or with --output-dir / KUBETUNE_LOCAL_ARTIFACTS (developers only) a local directory
    standing in for it (localstore.py)."""
    from .localstore import ENV, LocalS3

    out = cfg.spec.output
    if os.environ.get(ENV):
        log.warning("artifacts go to the local directory %s, not S3 (%s)", os.environ[ENV], ENV)
        local = LocalS3(os.environ[ENV])
        local.owner_uid = cfg.job.uid
        return local
    return S3(
        endpoint=out.endpoint,
        region=out.region,
        sse=str(out.sse),
        kms_key_id=out.kms_key_id,
        owner_uid=cfg.job.uid,
        retry_seconds=cfg.s3_retry_seconds,
    )


def run(cfg: TrainerConfig) -> dict[str, Any]:
    """All stages; returns the success result (failures raise TrainerFailure)."""
    STARTUP.clear()
    STARTUP["t0"] = time.monotonic()
    preflight(cfg)
    is_main, local_rank = _distributed()
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    work = Path(cfg.work_dir) / f"kubetune-run-{cfg.job.run}"
    reporter = ProgressReporter(
        cfg.job.namespace,
        cfg.job.name,
        cfg.job.run,
        cfg.progress_interval_seconds,
        enabled=cfg.report_progress and is_main,
    )
    ctx = Context(
        cfg=cfg,
        work=work,
        s3=_store(cfg),
        reporter=reporter,
        is_main=is_main,
    )
    try:
        return _run(ctx, local_rank, multi)
    except BaseException:
        reporter.update(force=True, stage="failed")
        raise
    finally:
        reporter.close()


def _run(ctx: Context, local_rank: int | None, multi: bool) -> dict[str, Any]:
    # Only what the data stage needs is imported up front (fast failure on bad data); the
    # modules that pull in torch/transformers/peft come after it.
    from . import data as data_mod
    from . import logs, sources

    cfg, spec = ctx.cfg, ctx.cfg.spec
    from .speed import configure_allocator

    configure_allocator()  # before anything initialises CUDA (speed.py, docs/benchmarks.md)
    if not local_rank:  # one cleaner per pod: the other local ranks may be downloading
        for stale in ("artifacts", "checkpoints", "resume"):
            shutil.rmtree(ctx.work / stale, ignore_errors=True)
    ctx.artifacts.mkdir(parents=True, exist_ok=True)

    # resolve + data ---------------------------------------------------------------------
    ctx.report(stage="resolve")
    with _one_rank_at_a_time(ctx.work) if multi else contextlib.nullcontext():
        train_src = sources.resolve_data(
            spec.dataset, ctx.work / "data" / "train", ctx.s3, "dataset"
        )
        val = spec.dataset.validation
        eval_src = test_src = None
        if val is not None and val.split_fraction is None:
            eval_src = sources.resolve_data(
                val, ctx.work / "data" / "validation", ctx.s3, "validation"
            )
        test = spec.dataset.test
        if test is not None and test.split_fraction is None:
            test_src = sources.resolve_data(test, ctx.work / "data" / "test", ctx.s3, "test")
        ctx.report(stage="data")
        import datasets  # noqa: F401  (imported here so logging setup sees it)

        logs.quiet_libraries()
        prepared = data_mod.prepare(
            spec.dataset,
            spec.classification,
            train_src,
            eval_src,
            ctx.work / "datasets-cache",
            spec.hyperparameters.seed,
            test_src,
        )
        ctx.datasets = prepared.info
        ctx.report(stage="resolve")
        t_resolve = time.monotonic()
        resolved = sources.resolve_model(spec.model, ctx.work, ctx.s3)
        STARTUP["modelResolveSeconds"] = round(time.monotonic() - t_resolve, 2)
        adapter_dir = None
        if cfg.base_adapter_uri:
            assert ctx.s3 is not None
            adapter_dir = sources.resolve_adapter(
                cfg.base_adapter_uri, ctx.work / "base-adapter", ctx.s3
            )
    ctx.model_path = resolved.path
    ctx.base_model = {
        "source": resolved.source,
        "kind": resolved.kind,
        "revision": resolved.revision,
    }
    if cfg.lineage:
        ctx.base_model["lineage"] = cfg.lineage  # spec.model.fromJob: the base job run
    spec = _clamp_seq_len(ctx, spec, resolved.path)

    # load + build -------------------------------------------------------------------------
    import torch
    from transformers import set_seed

    from . import batchplan, evalstage, methods, modelload, speed, train
    from .save import merge_stage, release, save_stage

    cuda = torch.cuda.is_available()
    precision = modelload.resolve_precision(
        str(spec.hyperparameters.precision), cuda, cuda and torch.cuda.is_bf16_supported()
    )
    plan = speed.prepare(
        speed.plan(
            speed.detect_environment(),
            method=str(spec.method.type),
            task=str(spec.task),
            model_type=modelload.read_model_type(resolved.path),
            packing=spec.dataset.packing,
            # developers' A/B switch (bench/product_bench.py); the plan decides by default
            liger_requested={"0": False, "1": True}.get(os.environ.get("KUBETUNE_LIGER", "")),
            batch_size=spec.hyperparameters.batch_size,
            grad_accum=spec.hyperparameters.gradient_accumulation_steps,
        )
    )
    ctx.speed = plan.as_dict()
    log.info("speed: %s", "; ".join(plan.reasons))
    dist, batch = batchplan.distribution(spec, resolved.path, local_rank if cuda else None)
    batch = batchplan.fold(
        ctx.speed, spec, plan, resolved.path, batch, (local_rank or 0) if cuda else None
    )
    ctx.speed["distribution"] = {**dist.as_dict(), "batch": batch}
    quant = spec.method.resolved().quantization
    ctx.report(stage="load")
    seed = spec.hyperparameters.seed
    set_seed(seed)  # newly initialised heads are part of the run's reproducibility
    t_load = time.monotonic()
    tokenizer = modelload.load_tokenizer(
        resolved.path, spec.dataset, spec.model.trust_remote_code, resolved.source
    )
    loaded = modelload.load_model(
        resolved.path,
        task=str(spec.task),
        method=spec.method,
        classification=spec.classification,
        dtype=modelload.load_dtype_name(spec.method, precision, cuda),
        trust_remote_code=spec.model.trust_remote_code,
        tokenizer=tokenizer,
        source=resolved.source,
        device_index=(local_rank or 0) if cuda else None,
        attn_implementation=plan.attn_implementation if cuda else None,
        quant_storage=distribute.quant_storage(dist, str(quant.compute_dtype)) if quant else None,
    )
    STARTUP["modelLoadSeconds"] = round(time.monotonic() - t_load, 2)
    if plan.liger and speed.apply_liger(loaded.model):
        log.info("speed: Liger kernels applied")
    ctx.report(stage="build")
    set_seed(seed)  # adapter initialisation too
    model = methods.apply(
        loaded,
        spec.method,
        str(spec.task),
        str(resolved.path),
        warm_start=adapter_dir,
    )
    trainable, total = methods.count_parameters(model)
    ctx.metrics.update(trainable_params=trainable, total_params=total)

    # train --------------------------------------------------------------------------------
    ctx.report(stage="train")
    report_to = tracking.tracking_env(cfg, ctx.artifacts / "tensorboard") if ctx.is_main else []
    # One tracker run from training through the final evaluation and the upload (tracking.py).
    with tracking.run_scope(cfg, report_to) as tracked:
        trainer = train.build_trainer(
            spec,
            model,
            tokenizer,
            prepared,
            output_dir=ctx.work / "checkpoints",
            precision=precision,
            cuda=cuda,
            run_name=tracking.run_name(cfg),
            report_to=report_to,
            padding_free=plan.padding_free,
            extra_args={
                **distribute.training_kwargs(dist, MethodType(spec.method.type)),
                "per_device_train_batch_size": batch["perDeviceBatchSize"],
                "gradient_accumulation_steps": batch["gradientAccumulationSteps"],
            },
        )
        store = None
        ckpt_prefix = cfg.checkpoint_prefix or join(cfg.run_prefix, "checkpoints") + "/"
        if spec.output.checkpoints:
            from .checkpoints import CheckpointStore

            store = CheckpointStore(ctx.s3, ckpt_prefix, spec.hyperparameters.save_total_limit)
        test_data = evalstage.test_data(trainer, spec, prepared, tokenizer)
        outcome = train.run(
            trainer, spec, ctx.reporter, store, ctx.work, prepared.eval is not None, test_data
        )
        ctx.metrics.update(outcome.metrics)
        ctx.warnings.extend(outcome.warnings)
        scores = evalstage.Scores(outcome.base_test, outcome.tuned_test)
        scores.record(ctx.metrics)
        ctx.metrics["bad_rows_skipped"] = prepared.bad_rows_skipped
        # FSDP: every rank takes part in gathering the whole weights; rank 0 keeps them.
        trained, state = _gathered(trainer) if dist.strategy == "fsdp" else (trainer.model, None)
        if not ctx.is_main:
            return {}
        # Nothing else may keep the training copy (or its optimizer state) alive through the
        # merge, which loads the base model again.
        del trainer, outcome, model, loaded

        # save + merge + upload ----------------------------------------------------------------
        record = method_record(spec.method.type)
        save_stage(ctx, trained, tokenizer, state)
        del trained, state
        release()
        merge_stage(ctx, tokenizer)
        metrics = {k: v for k, v in ctx.metrics.items() if v is not None}
        verdict = scores.judge(ctx.s3, cfg, scored=test_data is not None)
        (ctx.artifacts / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=2))
        ctx.report(stage="upload")
        from .upload import upload

        uris = upload(
            ctx.s3,
            ctx.artifacts,
            cfg,
            merged_possible=record.mergeable or not record.adapter,
            base_model=ctx.base_model,
            datasets=ctx.datasets,
            speed={**ctx.speed, "startup": {k: v for k, v in STARTUP.items() if k != "t0"}},
            metrics=_jsonable(metrics),
            evaluation=verdict.evaluation or None,
            promotion=verdict.promotion_status(),
        )
        verdict.promote(ctx.s3, cfg, uris)
        if store is not None:
            uris["checkpointUri"] = store.prefix
        ctx.artifact_uris = uris
        tracked.record_artifacts(uris)
        ctx.report(stage="done")
        summary = verdict.summary(metrics)
        return result_mod.build(
            outcome="Succeeded",
            reason="Completed",
            message=f"trained {metrics.get('train_steps', '?')} steps"
            + (f": {summary}" if summary else "")
            + "".join(f" (warning: {w})" for w in ctx.warnings),
            retryable=False,
            artifacts=uris,
            metrics=metrics,
            evaluation=verdict.evaluation,
            promotion=verdict.promotion_status(),
        )


def _clamp_seq_len(ctx: Context, spec: FineTuneJobSpec, model_dir: Path) -> FineTuneJobSpec:
    """dataset.maxSeqLength within the model's position limit (seqlen.py), recorded in the
    manifest (`datasets.maxSeqLength`) and, when clamped, warned about in the log and status."""
    from . import seqlen

    seq = seqlen.resolve(spec.dataset.max_seq_length, model_dir)
    ctx.datasets["maxSeqLength"] = seq.record()
    warning = seq.warning()
    if warning is None:
        return spec
    log.warning("%s", warning)
    ctx.warnings.append(warning)
    dataset = spec.dataset.model_copy(update={"max_seq_length": seq.effective})
    return spec.model_copy(update={"dataset": dataset})


def _gathered(trainer: Any) -> tuple[Any, dict[str, Any] | None]:
    """The FSDP-trained model and its whole weights, gathered on rank 0 (a collective: every
    rank calls it). save_stage writes the gathered state dict, not the shards."""
    acc = trainer.accelerator
    state = acc.get_state_dict(trainer.model)
    return acc.unwrap_model(trainer.model), state


def _jsonable(metrics: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, float) and not math.isfinite(v):
            out[k] = str(v)
        elif isinstance(v, int | float | str | bool) or v is None:
            out[k] = v
        else:
            out[k] = str(v)
    return out
