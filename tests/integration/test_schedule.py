"""FineTuneSchedule on the real control plane and MinIO, with the stub trainer and a 2-second
data check: the first fingerprint is a baseline, an unchanged dataset starts nothing over
several checks, a change of the data in MinIO starts exactly one run, a change while that run
is active is held (concurrencyPolicy Forbid) and starts exactly one more run when it ends, with
lineage. And the API server refuses bad schedules at apply, naming the field."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from clusterlib import REPO, Cluster
from operator_harness import Ftj, Operators, stub_ftj

pytestmark = pytest.mark.integration

INTERVAL = 2
SCHED = "retrain"


def schedule_manifest(prefix: str, **spec: Any) -> dict[str, Any]:
    template = stub_ftj("x", hyperparameters={"maxSteps": 150})["spec"]  # runs ~15 s
    template["dataset"] = {"s3Uri": prefix}
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneSchedule",
        "metadata": {"name": SCHED},
        "spec": {
            "trigger": {"datasetChange": {"intervalSeconds": INTERVAL}},
            "template": {"metadata": {"labels": {"team": "a"}}, "spec": template},
            **spec,
        },
    }


class Schedule:
    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster, self.namespace = cluster, namespace

    def status(self) -> dict[str, Any]:
        obj = self.cluster.kubectl_json("get", "fts", SCHED, namespace=self.namespace)
        return dict(obj.get("status") or {})

    def runs(self) -> list[dict[str, Any]]:
        items = self.cluster.kubectl_json(
            "get", "finetunejobs", "-l", f"kubetune.io/schedule={SCHED}", namespace=self.namespace
        )["items"]
        return sorted(items, key=lambda o: int(o["metadata"]["resourceVersion"]))

    def wait(self, fn: Any, what: str, timeout: float = 60) -> Any:
        try:
            return self.cluster.wait_for(fn, timeout=timeout, interval=0.5, what=what)
        except AssertionError as e:
            raise AssertionError(f"{e}\nstatus: {json.dumps(self.status(), indent=1)}") from None


def test_a_data_change_starts_exactly_one_run(
    cluster: Cluster, namespace: str, operators: Operators
) -> None:
    cluster.wait_crd_established("finetuneschedules.kubetune.io")
    s3 = cluster.s3_client()
    bucket = cluster.s3_bucket
    key = f"schedule-tests/{namespace}/train"
    s3.put_object(Bucket=bucket, Key=f"{key}/a.jsonl", Body=b'{"text": "a"}\n')
    watch = {"*": [f"s3://{bucket}/schedule-tests/{{namespace}}/"]}  # this namespace's only
    operators.new(env={"AWS_ACCESS_KEY_ID": cluster.aws_access_key_id,
                       "AWS_SECRET_ACCESS_KEY": cluster.aws_secret_access_key,
                       "KUBETUNE_SCHEDULE_WATCH_PREFIXES": json.dumps(watch)})  # fmt: skip
    cluster.apply(schedule_manifest(f"s3://{bucket}/{key}/"), namespace=namespace)
    sched = Schedule(cluster, namespace)

    st = sched.wait(lambda: (s := sched.status()).get("reason") == "DatasetBaseline" and s,
                    "the baseline fingerprint")  # fmt: skip
    baseline = st["datasetFingerprint"]
    assert baseline.startswith("sha256:")
    first_check = st["datasetCheckedTime"]

    # Unchanged over several checks: no run.
    sched.wait(lambda: (s := sched.status()).get("reason") == "DatasetUnchanged" and s,
               "an unchanged check")  # fmt: skip
    time.sleep(3 * INTERVAL)
    st = sched.status()
    assert sched.runs() == [], "an unchanged dataset must start nothing"
    assert st["datasetFingerprint"] == baseline and st["datasetCheckedTime"] > first_check
    assert st["reason"] == "DatasetUnchanged", st

    # A new shard in MinIO: exactly one run.
    s3.put_object(Bucket=bucket, Key=f"{key}/b.jsonl", Body=b'{"text": "b"}\n')
    sched.wait(lambda: len(sched.runs()) >= 1, "a run for the change")
    time.sleep(2 * INTERVAL)
    runs = sched.runs()
    assert len(runs) == 1, [r["metadata"]["name"] for r in runs]
    first = runs[0]["metadata"]
    st = sched.status()
    assert st["lastRun"]["name"] == first["name"] and st["lastRun"]["trigger"] == "DatasetChange"
    assert st["datasetFingerprint"] != baseline
    assert first["labels"] == {"team": "a", "kubetune.io/schedule": SCHED}
    assert first["annotations"]["kubetune.io/dataset-fingerprint"] == st["datasetFingerprint"]
    assert first["ownerReferences"][0]["kind"] == "FineTuneSchedule"
    run1 = Ftj(cluster, namespace, first["name"])
    run1.wait_phase("Running")

    # Another change while it runs: held (Forbid), then exactly one more run after it ends.
    s3.put_object(Bucket=bucket, Key=f"{key}/c.jsonl", Body=b'{"text": "c"}\n')
    st = sched.wait(lambda: (s := sched.status()).get("reason") == "ForbidConcurrent" and s,
                    "the change held while the run is active")  # fmt: skip
    assert first["name"] in st["message"] and st["active"] == [first["name"]]
    assert len(sched.runs()) == 1
    run1.wait_phase("Succeeded", timeout=60)
    sched.wait(lambda: len(sched.runs()) >= 2, "a run once the active one ended")
    time.sleep(2 * INTERVAL)
    runs = sched.runs()
    assert len(runs) == 2, [r["metadata"]["name"] for r in runs]
    second = runs[1]["metadata"]
    assert second["annotations"]["kubetune.io/previous-run"] == first["name"]
    st = sched.status()
    assert [h["name"] for h in st["history"]] == [first["name"], second["name"]]
    assert st["history"][1]["previous"] == first["name"]
    # The checks since: unchanged data, so RunStarted says why nothing started.
    started = next(c for c in st["conditions"] if c["type"] == "RunStarted")
    assert (started["status"], started["reason"]) == ("False", "DatasetUnchanged"), st
    events = cluster.kubectl_json(
        "get", "events", "--field-selector",
        f"involvedObject.kind=FineTuneSchedule,involvedObject.name={SCHED}", namespace=namespace,
    )["items"]  # fmt: skip
    assert [e["reason"] for e in events] == ["DatasetChanged", "DatasetChanged"], events
    # Credentials never reach the status or the Events.
    text = (
        json.dumps(st) + cluster.kubectl("get", "events", "-o", "json", namespace=namespace).stdout
    )
    assert cluster.aws_secret_access_key not in text


BAD = [
    ("no trigger", {"trigger": None}, "set spec.schedule (a cron expression)"),
    ("a cron of three fields", {"schedule": "* * *"}, "spec.schedule"),
    ("timeZone without a cron", {"timeZone": "Europe/Berlin"}, "spec.timeZone"),
    ("an interval under 2 s", {"trigger": {"datasetChange": {"intervalSeconds": 1}}},
     "spec.trigger.datasetChange.intervalSeconds"),
]  # fmt: skip


def test_the_api_server_refuses_bad_schedules_naming_the_field(
    cluster: Cluster, namespace: str
) -> None:
    cluster.wait_crd_established("finetuneschedules.kubetune.io")
    for why, spec, fragment in BAD:
        manifest = schedule_manifest("s3://kubetune/x/")
        manifest["spec"].update(spec)
        manifest["spec"] = {k: v for k, v in manifest["spec"].items() if v is not None}
        body = json.dumps(manifest)
        proc = cluster.kubectl("apply", "-f", "-", namespace=namespace, input=body, check=False)
        assert proc.returncode != 0, f"{why}: accepted"
        assert fragment in proc.stderr, f"{why}: {proc.stderr}"
    good = schedule_manifest("s3://kubetune/x/", schedule="@daily", suspend=True)
    cluster.apply(good, namespace=namespace)
    example = REPO / "examples" / "retraining-schedule.yaml"
    proc = cluster.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(example),
                           namespace=namespace, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
