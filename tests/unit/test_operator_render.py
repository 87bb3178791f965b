"""render.py: a FineTuneJob spec -> the objects of one run (pure; no cluster)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubetune_api.v1alpha1 import (
    MODEL_CACHE_ENV,
    MODEL_CACHE_ROOT,
    MODEL_CACHE_SUBPATH,
    FineTuneJobSpec,
    Reason,
    TrainerConfig,
    pvc_mount_path,
)
from kubetune_operator import render
from kubetune_operator.render import Owner, RenderError, Run
from kubetune_operator.settings import OperatorSettings

OWNER = Owner("team-a", "llama-sft", "0b7c1c9e-1111-2222-3333-444455556666")
RUN = Run(number=3, generation=7, spec_hash="abc123")


def make_spec(**over: Any) -> FineTuneJobSpec:
    raw: dict[str, Any] = {
        "model": {"hubId": "org/model"},
        "dataset": {"s3Uri": "s3://data/train.jsonl"},
        "output": {"uri": "s3://bucket/out"},
    }
    for key, value in over.items():
        raw[key] = value
    return FineTuneJobSpec.model_validate(raw)


def settings(**kw: Any) -> OperatorSettings:
    base: dict[str, Any] = {"trainer_image": "trainer:test", "lease_namespace": "ops"}
    base.update(kw)
    return OperatorSettings(**base)


def walk(obj: Any) -> Any:
    """Every (key, value) pair anywhere in a nested structure."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from walk(v)


def test_names_are_deterministic_and_bounded() -> None:
    assert render.job_name("llama-sft", 3) == "llama-sft-run-3"
    assert render.config_map_name("llama-sft", 3) == "llama-sft-run-3"
    assert render.trainer_sa_name("llama-sft") == "llama-sft-trainer"
    long = "x" * 60
    a, b = render.job_name(long, 12), render.job_name(long + "y", 12)
    assert len(a) <= 63 and len(b) <= 63 and a != b and a.endswith("-run-12")
    assert render.job_name(long, 12) == a
    assert len(render.label_value("y" * 100)) <= 63


def test_job_shape() -> None:
    spec = make_spec(
        runPolicy={
            "backoffLimit": 4,
            "activeDeadlineSeconds": 3600,
            "ttlSecondsAfterFinished": 600,
            "suspend": True,
        }
    )
    job = render.job(spec, OWNER, RUN, settings())
    meta = job["metadata"]
    assert meta["name"] == "llama-sft-run-3" and meta["namespace"] == "team-a"
    assert meta["labels"][render.LABEL_JOB] == "llama-sft"
    assert meta["labels"][render.LABEL_RUN] == "3"
    assert meta["annotations"][render.ANN_SPEC_HASH] == "abc123"
    assert meta["annotations"][render.ANN_GENERATION] == "7"
    assert meta["annotations"][render.ANN_SUSPEND] == "true"
    (ref,) = meta["ownerReferences"]
    assert ref == {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "name": "llama-sft",
        "uid": OWNER.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
    js = job["spec"]
    assert js["backoffLimit"] == 4
    assert js["activeDeadlineSeconds"] == 3600
    assert "ttlSecondsAfterFinished" not in js  # applied by the operator, see runs.expired_jobs
    assert js["suspend"] is True
    fail, ignore = js["podFailurePolicy"]["rules"]
    assert fail["action"] == "FailJob"
    assert fail["onExitCodes"] == {
        "containerName": "trainer",
        "operator": "In",
        "values": list(range(10, 20)),
    }
    assert ignore == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    pod = js["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert js["template"]["metadata"]["labels"][render.LABEL_RUN] == "3"


def test_defaults_leave_optional_job_fields_out() -> None:
    js = render.job(make_spec(), OWNER, RUN, settings())["spec"]
    assert js["backoffLimit"] == 2 and js["suspend"] is False
    assert "activeDeadlineSeconds" not in js and "ttlSecondsAfterFinished" not in js


def test_pod_security_is_restricted_and_cannot_be_widened() -> None:
    spec = make_spec(
        resources={
            "affinity": {"nodeAffinity": {}},
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
            "priorityClassName": "training",
        }
    )
    pod = render.pod_spec(spec, OWNER, RUN, settings())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == render.TRAINER_UID == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is True
    for key, value in walk(pod):
        assert key not in ("hostPath", "hostNetwork", "hostPID", "hostIPC", "hostPort")
        if key == "privileged":
            assert value is False
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert {"/workspace", "/tmp", "/dev/shm", "/etc/kubetune"} <= set(mounts)
    assert mounts["/etc/kubetune"]["readOnly"] is True
    assert mounts["/tmp"] == {"name": "workspace", "mountPath": "/tmp", "subPath": "tmp"}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    assert vols["config"]["configMap"]["name"] == "llama-sft-run-3"


def test_command_config_and_image() -> None:
    cfg = settings(trainer_command=["python", "/x/stub.py"])
    (c,) = render.pod_spec(make_spec(), OWNER, RUN, cfg)["containers"]
    assert c["command"] == ["python", "/x/stub.py"]
    assert c["args"] == ["--config", "/etc/kubetune/config.json"]
    assert c["image"] == "trainer:test"
    (c2,) = render.pod_spec(make_spec(resources={"image": "custom:1"}), OWNER, RUN, settings())[
        "containers"
    ]
    assert c2["image"] == "custom:1"
    assert c2["command"] == ["kubetune-train"]


def test_credentials_only_as_secret_refs() -> None:
    spec = make_spec(
        model={"hubId": "org/gated", "tokenSecretRef": {"name": "hf", "key": "token"}},
        output={"uri": "s3://bucket/out", "credentialsSecretRef": {"name": "s3-creds"}},
        tracking={
            "reportTo": ["wandb", "mlflow"],
            "wandb": {"project": "p", "apiKeySecretRef": {"name": "wb", "key": "k"}},
            "mlflow": {
                "trackingUri": "http://mlflow:5000",
                "tokenSecretRef": {"name": "ml", "key": "t"},
            },
        },
    )
    env = {e["name"]: e for e in render.env(spec, settings())}
    for name, secret, key in (
        ("AWS_ACCESS_KEY_ID", "s3-creds", "AWS_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "s3-creds", "AWS_SECRET_ACCESS_KEY"),
        ("HF_TOKEN", "hf", "token"),
        ("WANDB_API_KEY", "wb", "k"),
        ("MLFLOW_TRACKING_TOKEN", "ml", "t"),
    ):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert env["KUBETUNE_CONFIG"]["value"] == "/etc/kubetune/config.json"
    assert env["KUBETUNE_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["HF_HOME"]["value"].startswith("/workspace")
    assert env["TMPDIR"]["value"].startswith("/workspace")


def test_s3_defaults_from_operator() -> None:
    cfg = settings(s3_endpoint="http://minio:9000", s3_region="eu-1", s3_credentials_secret="s3")
    env = {e["name"]: e for e in render.env(make_spec(), cfg)}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["AWS_DEFAULT_REGION"]["value"] == "eu-1"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "s3"
    spec = make_spec(
        output={"uri": "s3://bkt/o", "endpoint": "https://s3.example", "region": "us-2"}
    )
    env = {e["name"]: e for e in render.env(spec, cfg)}
    assert env["AWS_ENDPOINT_URL"]["value"] == "https://s3.example"
    assert env["AWS_DEFAULT_REGION"]["value"] == "us-2"
    env = {e["name"]: e for e in render.env(make_spec(), settings())}
    assert "AWS_ACCESS_KEY_ID" not in env and "AWS_ENDPOINT_URL" not in env


def test_config_map_holds_the_resolved_trainer_config_and_no_secret_values() -> None:
    spec = make_spec(
        output={"uri": "s3://bucket/out", "credentialsSecretRef": {"name": "s3-creds"}}
    )
    cm = render.config_map(spec, OWNER, RUN, settings(progress_interval_seconds=3))
    assert cm["metadata"]["name"] == "llama-sft-run-3" and cm["immutable"] is True
    cfg = TrainerConfig.model_validate(json.loads(cm["data"]["config.json"]))
    assert cfg.job.namespace == "team-a" and cfg.job.name == "llama-sft"
    assert cfg.job.run == 3 and cfg.job.generation == 7 and cfg.job.uid == OWNER.uid
    # the uid's first 8 characters keep a re-created object with the same name apart
    uid8 = OWNER.uid[:8]
    assert cfg.run_prefix == f"s3://bucket/out/team-a/llama-sft/{uid8}/run-3/"
    assert cfg.checkpoint_prefix == f"s3://bucket/out/team-a/llama-sft/{uid8}/run-3/checkpoints/"
    assert cfg.s3_retry_seconds == 600
    assert cfg.progress_interval_seconds == 3
    assert cfg.spec == spec
    text = cm["data"]["config.json"]
    assert "AWS_SECRET_ACCESS_KEY" not in text and "secretKey" not in text


def test_gpus_node_selector_and_tolerations() -> None:
    cfg = settings(
        gpu_resource_name="example.com/gpu",
        gpu_product_label="example.com/product",
        default_node_selector={"pool": "train"},
        default_tolerations=[{"key": "dedicated", "operator": "Exists"}],
    )
    spec = make_spec(
        resources={
            "gpus": 2,
            "gpuType": "H100",
            "cpu": "8",
            "memory": "64Gi",
            "nodeSelector": {"zone": "a"},
            "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        }
    )
    pod = render.pod_spec(spec, OWNER, RUN, cfg)
    res = pod["containers"][0]["resources"]
    assert res["limits"] == {"cpu": "8", "memory": "64Gi", "example.com/gpu": "2"}
    assert res["requests"] == res["limits"]
    assert pod["nodeSelector"] == {"pool": "train", "zone": "a", "example.com/product": "H100"}
    assert pod["tolerations"] == [
        {"key": "dedicated", "operator": "Exists"},
        {"key": "gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    mig = make_spec(resources={"gpus": 1, "gpuResourceName": "nvidia.com/mig-1g.10gb"})
    res = render.pod_spec(mig, OWNER, RUN, cfg)["containers"][0]["resources"]
    assert res["limits"] == {"nvidia.com/mig-1g.10gb": "1"}
    cpu_only = render.pod_spec(make_spec(), OWNER, RUN, settings())
    assert "resources" not in cpu_only["containers"][0]
    assert "nodeSelector" not in cpu_only and "tolerations" not in cpu_only


def test_operator_default_cpu_and_memory() -> None:
    pod = render.pod_spec(make_spec(), OWNER, RUN, settings(default_cpu="2", default_memory="8Gi"))
    assert pod["containers"][0]["resources"]["limits"] == {"cpu": "2", "memory": "8Gi"}


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"shmSize": "2Gi"}, "2Gi"),
        ({"memory": "16Gi"}, "4096Mi"),
        ({}, "1Gi"),
        ({"memory": "128Mi"}, "1Gi"),
    ],
)
def test_shm_size(resources: dict[str, Any], expected: str) -> None:
    assert render.shm_size(make_spec(resources=resources), settings()) == expected


def test_rbac_lets_the_trainer_patch_only_its_own_status() -> None:
    spec = make_spec()
    sa, role, binding = render.rbac(spec, OWNER, settings())
    assert sa["kind"] == "ServiceAccount" and sa["metadata"]["name"] == "llama-sft-trainer"
    assert role["rules"] == [
        {
            "apiGroups": ["kubetune.io"],
            "resources": ["finetunejobs/status"],
            "resourceNames": ["llama-sft"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["roleRef"]["name"] == "llama-sft-trainer"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "llama-sft-trainer", "namespace": "team-a"}
    ]
    pod = render.pod_spec(spec, OWNER, RUN, settings())
    assert pod["serviceAccountName"] == "llama-sft-trainer"
    for obj in (sa, role, binding):
        assert obj["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid


def test_service_account_override_needs_the_allow_list() -> None:
    spec = make_spec(resources={"serviceAccountName": "irsa-trainer"})
    with pytest.raises(RenderError) as err:
        render.run_objects(spec, OWNER, RUN, settings())
    assert err.value.reason == Reason.SERVICE_ACCOUNT_NOT_ALLOWED
    assert "irsa-trainer" in err.value.message
    cfg = settings(allowed_service_accounts=["irsa-trainer"])
    objs = render.run_objects(spec, OWNER, RUN, cfg)
    assert [o["kind"] for o in objs] == [
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "ConfigMap",
        "Job",
    ]
    assert objs[-1]["spec"]["template"]["spec"]["serviceAccountName"] == "irsa-trainer"
    assert objs[2]["subjects"][0]["name"] == "irsa-trainer"


def test_pvc_sources_are_mounted_read_only_where_the_trainer_looks() -> None:
    spec = make_spec(
        model={"pvc": {"claimName": "models", "path": "/llama"}},
        dataset={
            "pvc": {"claimName": "data"},
            "validation": {"pvc": {"claimName": "models"}},
            "test": {"pvc": {"claimName": "held-out"}},
        },
    )
    pod = render.pod_spec(spec, OWNER, RUN, settings())
    claims = {
        v["persistentVolumeClaim"]["claimName"]: v
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert set(claims) == {"models", "data", "held-out"}
    assert all(v["persistentVolumeClaim"]["readOnly"] for v in claims.values())
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts[pvc_mount_path("models")]["readOnly"] is True
    assert mounts[pvc_mount_path("data")]["readOnly"] is True


def test_model_cache_claim_is_mounted_read_write_only_in_its_directory() -> None:
    spec = make_spec(model={"s3Uri": "s3://models/llama/", "cacheClaimName": "model-cache"})
    pod = render.pod_spec(spec, OWNER, RUN, settings())
    vol = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert vol["persistentVolumeClaim"] == {"claimName": "model-cache"}
    c = pod["containers"][0]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "model-cache")
    assert mount == {
        "name": "model-cache",
        "mountPath": MODEL_CACHE_ROOT,
        "subPath": MODEL_CACHE_SUBPATH,
    }
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env[MODEL_CACHE_ENV] == MODEL_CACHE_ROOT
    assert env["HF_HUB_CACHE"].startswith(MODEL_CACHE_ROOT)
    # without the field: no volume, no variable (the trainer caches on the pod's scratch volume)
    plain = render.pod_spec(make_spec(), OWNER, RUN, settings())
    assert not any(v["name"] == "model-cache" for v in plain["volumes"])
    assert MODEL_CACHE_ENV not in {e["name"] for e in plain["containers"][0]["env"]}
    with pytest.raises(ValueError, match="cacheClaimName applies only"):
        make_spec(model={"pvc": {"claimName": "m"}, "cacheClaimName": "model-cache"})


def test_quantities() -> None:
    assert render.parse_quantity("16Gi") == 16 * 2**30
    assert render.parse_quantity("500m") * 1000 == 500
    assert render.parse_quantity("1e3") == 1000
    with pytest.raises(ValueError):
        render.parse_quantity("lots")


def test_queued_job_is_created_suspended_with_kueues_labels() -> None:
    spec = make_spec(queueName="team-a-gpus", workloadPriorityClass="high")
    job = render.job(spec, OWNER, RUN, settings())
    labels = job["metadata"]["labels"]
    assert labels[render.KUEUE_QUEUE_LABEL] == "team-a-gpus"
    assert labels[render.KUEUE_PRIORITY_LABEL] == "high"
    # Kueue admits by unsuspending; the annotation keeps the user's intent (not suspended), so
    # the operator's suspend reconciliation leaves Kueue's suspend alone.
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["annotations"][render.ANN_SUSPEND] == "false"
    # Without a queue: not suspended, no Kueue label.
    plain = render.job(make_spec(), OWNER, RUN, settings())
    assert plain["spec"]["suspend"] is False
    assert render.KUEUE_QUEUE_LABEL not in plain["metadata"]["labels"]
