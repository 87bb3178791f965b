"""The OpenAI-compatible fine-tuning API with the official `openai` client, against the real API
server (TokenReview, SubjectAccessReview), MinIO, the real operator and the real trainer:
upload a chat JSONL file, create a job on the tiny model, poll until succeeded, read its events,
checkpoints and fine_tuned_model; list with pagination; cancel; another team's token gets 404 in
its own namespace and 403 in ours; a bad file is refused naming its line; an unknown model gets
OpenAI's error shape. The server runs as the chart's ServiceAccount with the chart's RBAC."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterlib import REPO, Cluster
from operator_harness import OPERATOR_NAMESPACE, RBAC_KINDS, Operators, free_port

openai = pytest.importorskip("openai", minversion="1.50", reason="pip install 'openai>=1.50'")
pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROLE = """
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: finetuner}
rules:
- apiGroups: [kubetune.io]
  resources: [finetunejobs]
  verbs: [get, list, create, patch]
"""


def team_token(cluster: Cluster, namespace: str, user: str) -> str:
    """A ServiceAccount allowed get/list/create/patch on finetunejobs in its namespace only."""
    cluster.kubectl("apply", "-f", "-", input=ROLE, namespace=namespace)
    cluster.kubectl("create", "serviceaccount", user, namespace=namespace)
    cluster.kubectl(
        "create",
        "rolebinding",
        user,
        "--role=finetuner",
        f"--serviceaccount={namespace}:{user}",
        namespace=namespace,
    )
    return cluster.kubectl("create", "token", user, namespace=namespace).stdout.strip()


def server_identity(
    cluster: Cluster, namespaces: list[str], tmp_path: Path
) -> tuple[Path, list[Any]]:
    """The chart's RBAC for the API server (openaiApi.enabled, namespaces=[namespace]), applied,
    and a kubeconfig with its ServiceAccount's token: a rule missing from the chart fails the
    test as it would fail in a cluster."""
    release = "oa" + namespaces[0][-5:]
    rendered = subprocess.run(
        [
            cluster.helm_path,
            "template",
            release,
            str(REPO / "helm" / "kubetune"),
            "--namespace",
            OPERATOR_NAMESPACE,
            "--set",
            "openaiApi.enabled=true",
            "--set",
            "openaiApi.filesUri=s3://x/f",
            "--set",
            "openaiApi.outputUri=s3://x/o",
            "--set-json",
            f"openaiApi.namespaces={json.dumps(namespaces)}",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=cluster.process_env(),
    ).stdout
    docs = [
        d
        for d in yaml.safe_load_all(rendered)
        if d and "openai" in d["metadata"]["name"] and d["kind"] in RBAC_KINDS
    ]
    cluster.apply(docs)
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")["metadata"]["name"]
    kubeconfig = cluster.token_kubeconfig(
        sa, OPERATOR_NAMESPACE, tmp_path / "openai-api.kubeconfig"
    )
    return kubeconfig, docs


def finished(client: Any, job_id: str, timeout: float = 600) -> Any:
    """The job once succeeded, failed or cancelled (or as it stands after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled") or time.monotonic() > deadline:
            return job
        time.sleep(3)


@pytest.fixture
def team_b(cluster: Cluster, namespace: str) -> Iterator[str]:
    name = namespace[:50] + "-b"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def server(
    cluster: Cluster, namespace: str, team_b: str, op_identity: Any, tmp_path: Path
) -> Iterator[str]:
    kubeconfig, rbac = server_identity(cluster, [namespace, team_b], tmp_path)
    port = free_port()
    env = cluster.process_env() | {
        "KUBECONFIG": str(kubeconfig),
        "KUBETUNE_API_PORT": str(port),
        "KUBETUNE_API_HOST": "127.0.0.1",
        "KUBETUNE_API_FILES_URI": f"s3://{cluster.s3_bucket}/openai-files",
        "KUBETUNE_API_OUTPUT_URI": f"s3://{cluster.s3_bucket}/output",
        "KUBETUNE_API_MODELS": json.dumps(
            {"tiny-llama": {"s3Uri": f"s3://{cluster.s3_bucket}/models/tiny-llama/"}}
        ),
        "KUBETUNE_API_JOB_DEFAULTS": json.dumps(
            {
                "dataset": {"maxSeqLength": 128},
                "method": {"type": "lora", "lora": {"r": 8, "alpha": 16}},
                "hyperparameters": {"maxSteps": 8, "learningRate": 0.0005},
            }
        ),
    }
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetune.openai_api"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        cluster.wait_for(
            lambda: _up(url) or proc.poll() is not None, timeout=60, what="the OpenAI API server"
        )
        assert proc.poll() is None, (tmp_path / "server.log").read_text()
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(10)
        print("----- server log -----\n" + (tmp_path / "server.log").read_text()[-4000:])
        for d in rbac:
            if d["kind"] in ("ClusterRole", "ClusterRoleBinding"):
                cluster.kubectl(
                    "delete",
                    d["kind"].lower(),
                    d["metadata"]["name"],
                    "--ignore-not-found",
                    check=False,
                )


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def chat_rows(n: int) -> str:
    rows = []
    for i in range(n):
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": "You answer briefly."},
                    {"role": "user", "content": f"What is {i} plus one?"},
                    {"role": "assistant", "content": f"{i + 1}."},
                ]
            }
        )
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_openai_client_end_to_end_with_two_teams(
    cluster: Cluster,
    namespace: str,
    team_b: str,
    operators: Operators,
    tiny_fixtures: None,
    server: str,
    tmp_path: Path,
) -> None:
    operators.new(stub=False)
    token_a = team_token(cluster, namespace, "alice")
    token_b = team_token(cluster, team_b, "bob")
    _run(cluster, namespace, server, token_a, token_b, tmp_path)


def _run(cluster: Cluster, ns: str, base: str, token_a: str, token_b: str, tmp: Path) -> None:
    a = openai.OpenAI(api_key=token_a, base_url=base, max_retries=0)
    train = tmp / "train.jsonl"
    train.write_text(chat_rows(40))
    f = a.files.create(file=train.open("rb"), purpose="fine-tune")
    assert f.id.startswith("file-") and f.purpose == "fine-tune" and f.bytes == train.stat().st_size

    # a bad file is refused, naming the line
    bad = tmp / "bad.jsonl"
    lines = chat_rows(3).splitlines()
    lines[2] = json.dumps({"messages": [{"role": "wizard", "content": "hi"}]})
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(openai.BadRequestError) as e:
        a.files.create(file=bad.open("rb"), purpose="fine-tune")
    assert "line 3" in str(e.value) and "messages[0].role" in str(e.value)
    assert e.value.body["param"] == "file"  # type: ignore[index]

    # an unknown model, and an unknown hyperparameter: OpenAI's error shape
    with pytest.raises(openai.NotFoundError) as e:
        a.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id)
    assert e.value.body["code"] == "model_not_found" and "tiny-llama" in str(e.value)  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        a.fine_tuning.jobs.create(
            model="tiny-llama", training_file=f.id, hyperparameters={"n_epochs": 1, "warp": 9}
        )  # type: ignore[typeddict-unknown-key]
    assert "warp" in str(e.value)

    job = a.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=f.id,
        suffix="t1",
        method={
            "type": "supervised",
            "supervised": {"hyperparameters": {"batch_size": 4, "learning_rate_multiplier": 2}},
        },
    )
    assert job.id.startswith("ftjob-") and job.status in ("queued", "running")
    obj = cluster.kubectl_json("get", "finetunejob", job.id, namespace=ns)
    assert obj["spec"]["hyperparameters"]["batchSize"] == 4
    assert obj["spec"]["hyperparameters"]["learningRate"] == pytest.approx(0.001)
    assert obj["spec"]["dataset"]["format"] == "messages"

    # a second job, cancelled at once: list pagination and cancel
    other = a.fine_tuning.jobs.create(model="tiny-llama", training_file=f.id)
    cancelled = a.fine_tuning.jobs.cancel(other.id)
    assert cancelled.status == "cancelled"
    page = a.fine_tuning.jobs.list(limit=1)
    assert len(page.data) == 1 and page.has_more
    rest = a.fine_tuning.jobs.list(limit=10, after=page.data[0].id)
    assert {page.data[0].id, *[j.id for j in rest.data]} == {job.id, other.id}
    assert not rest.has_more

    # another team: 404 in its own namespace, 403 when it names ours
    b = openai.OpenAI(api_key=token_b, base_url=base, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        b.fine_tuning.jobs.retrieve(job.id)
    b_in_a = openai.OpenAI(
        api_key=token_b, base_url=base, max_retries=0, default_headers={"OpenAI-Project": ns}
    )
    with pytest.raises(openai.PermissionDeniedError):
        b_in_a.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.PermissionDeniedError):
        b_in_a.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(api_key="not-a-token", base_url=base, max_retries=0).fine_tuning.jobs.list()
    assert [j.id for j in b.fine_tuning.jobs.list().data] == []

    job = finished(a, job.id)
    assert job.status == "succeeded", (
        job,
        cluster.kubectl_json("get", "ftj", job.id, namespace=ns),
    )
    assert job.fine_tuned_model and job.fine_tuned_model.startswith(f"s3://{cluster.s3_bucket}/")
    assert job.finished_at and job.user_provided_suffix == "t1"
    events = a.fine_tuning.jobs.list_events(job.id, limit=50).data
    messages = [ev.message for ev in events]
    assert messages[0] == "The job has successfully completed", messages
    assert any(m.startswith("Completed:") for m in messages), messages
    assert any(ev.type == "metrics" for ev in events), messages
    checkpoints = a.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number == 8
    assert checkpoints[0].fine_tuned_model_checkpoint.startswith("s3://")
    print(
        f"\nopenai: {job.id} succeeded; fine_tuned_model {job.fine_tuned_model}; "
        f"{len(events)} events; {len(checkpoints)} checkpoints"
    )


def preference_rows(n: int) -> str:
    rows = []
    for i in range(n):
        rows.append(
            {
                "input": {"messages": [{"role": "user", "content": f"What is {i} plus one?"}]},
                "preferred_output": [{"role": "assistant", "content": f"{i + 1}."}],
                "non_preferred_output": [{"role": "assistant", "content": "I cannot count."}],
            }
        )
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_openai_client_dpo_job_trains_as_a_preference_run(
    cluster: Cluster,
    namespace: str,
    operators: Operators,
    tiny_fixtures: None,
    server: str,
    tmp_path: Path,
) -> None:
    """method dpo through the official client: the upload in OpenAI's preference format is
    converted beside itself to prompt/chosen/rejected rows, and the FineTuneJob trains with
    task preference (trl's DPO) on the real trainer until `succeeded`."""
    operators.new(stub=False)
    a = openai.OpenAI(
        api_key=team_token(cluster, namespace, "carol"), base_url=server, max_retries=0
    )
    train = tmp_path / "prefs.jsonl"
    train.write_text(preference_rows(24))
    f = a.files.create(file=train.open("rb"), purpose="fine-tune")
    job = a.fine_tuning.jobs.create(
        model="tiny-llama",
        training_file=f.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "batch_size": 4}}},
    )
    spec = cluster.kubectl_json("get", "finetunejob", job.id, namespace=namespace)["spec"]
    assert spec["task"] == "preference" and spec["dataset"]["format"] == "preference"
    assert spec["preference"] == {"algorithm": "dpo", "beta": 0.2}
    assert spec["dataset"]["s3Uri"].endswith(f"{f.id}.preference.jsonl")
    job = finished(a, job.id)
    assert job.status == "succeeded", cluster.kubectl_json(
        "get", "ftj", job.id, namespace=namespace
    )
    assert job.method is not None and job.method.type == "dpo"
