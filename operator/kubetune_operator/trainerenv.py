"""What the trainer reads: its TrainerConfig (in an immutable ConfigMap) and its environment.

Pure, like render.py. Credentials appear only as `secretKeyRef`s: the ConfigMap holds Secret
*names* at most, and the environment holds references, never values.
"""

from __future__ import annotations

import json
from typing import Any

from kubetune_api.v1alpha1 import (
    MODEL_CACHE_ENV,
    MODEL_CACHE_ROOT,
    FineTuneJobSpec,
    JobIdentity,
    TrainerConfig,
    run_prefix,
)

from .naming import (
    ANN_GENERATION,
    ANN_SPEC_HASH,
    CONFIG_KEY,
    CONFIG_PATH,
    WORKSPACE,
    Owner,
    Run,
    child_meta,
    config_map_name,
)
from .settings import OperatorSettings


def trainer_config(
    spec: FineTuneJobSpec, owner: Owner, run: Run, settings: OperatorSettings
) -> TrainerConfig:
    spec = run.resolved(spec)
    prefix = run_prefix(spec.output.uri, owner.namespace, owner.name, owner.uid, run.number)
    return TrainerConfig(
        job=JobIdentity(
            namespace=owner.namespace,
            name=owner.name,
            uid=owner.uid,
            generation=run.generation,
            run=run.number,
        ),
        spec=spec,
        run_prefix=prefix,
        checkpoint_prefix=f"{prefix}checkpoints/" if spec.output.checkpoints else None,
        progress_interval_seconds=settings.progress_interval_seconds,
        report_progress=True,
        work_dir=WORKSPACE,
        s3_retry_seconds=settings.s3_retry_seconds,
        base_adapter_uri=run.base.adapter_uri if run.base is not None else None,
        lineage=run.base.lineage if run.base is not None else None,
    )


def config_map(
    spec: FineTuneJobSpec, owner: Owner, run: Run, settings: OperatorSettings
) -> dict[str, Any]:
    cfg = trainer_config(spec, owner, run, settings)
    text = json.dumps(cfg.wire(), indent=2, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_meta(
            owner,
            config_map_name(owner.name, run.number),
            run.number,
            **{ANN_SPEC_HASH: run.spec_hash, ANN_GENERATION: str(run.generation)},
        ),
        "immutable": True,
        "data": {CONFIG_KEY: text},
    }


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def env(spec: FineTuneJobSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The trainer's environment (docs/design.md): plain values and Secret references only."""
    out: list[dict[str, Any]] = [
        {"name": "KUBETUNE_CONFIG", "value": CONFIG_PATH},
        {"name": "KUBETUNE_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {
            "name": "KUBETUNE_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
        },
        {"name": "HOME", "value": WORKSPACE},
        {"name": "HF_HOME", "value": f"{WORKSPACE}/.cache/huggingface"},
        {"name": "TMPDIR", "value": f"{WORKSPACE}/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    endpoint = spec.output.endpoint or settings.s3_endpoint
    if endpoint:
        out.append({"name": "AWS_ENDPOINT_URL", "value": endpoint})
    region = spec.output.region or settings.s3_region
    out += [
        {"name": "AWS_DEFAULT_REGION", "value": region},
        {"name": "AWS_REGION", "value": region},
    ]
    creds = (
        spec.output.credentials_secret_ref.name
        if spec.output.credentials_secret_ref
        else settings.s3_credentials_secret
    )
    if creds:
        out += [
            _secret_env("AWS_ACCESS_KEY_ID", creds, "AWS_ACCESS_KEY_ID"),
            _secret_env("AWS_SECRET_ACCESS_KEY", creds, "AWS_SECRET_ACCESS_KEY"),
            _secret_env("AWS_SESSION_TOKEN", creds, "AWS_SESSION_TOKEN", optional=True),
        ]
    if spec.model.token_secret_ref:
        ref = spec.model.token_secret_ref
        out.append(_secret_env("HF_TOKEN", ref.name, ref.key))
    if spec.model.cache_claim_name:
        # S3 models: the trainer's model cache; Hub models: huggingface_hub's own cache.
        out += [
            {"name": MODEL_CACHE_ENV, "value": MODEL_CACHE_ROOT},
            {"name": "HF_HUB_CACHE", "value": f"{MODEL_CACHE_ROOT}/hub"},
        ]
    tracking = spec.tracking
    if tracking.wandb is not None:
        ref = tracking.wandb.api_key_secret_ref
        out.append(_secret_env("WANDB_API_KEY", ref.name, ref.key))
    if tracking.mlflow is not None and tracking.mlflow.token_secret_ref is not None:
        ref = tracking.mlflow.token_secret_ref
        out.append(_secret_env("MLFLOW_TRACKING_TOKEN", ref.name, ref.key))
    return out
