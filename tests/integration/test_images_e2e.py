"""End to end inside the images: `helm install` of the chart with the locally built operator and
trainer images (hack/images), the node agent running both *in their images* (podman + runc,
tests/nodeagent/images.py). The operator runs from its image with the chart's ServiceAccount,
securityContext and arguments; the quickstart FineTuneJob reaches Succeeded with the trainer in
its image (artifacts and manifest checked by the shared test body of test_chart_install.py);
then a job with corrupt data fails at once with the same reason and message as outside the
image (test_trainer_errors.py::test_corrupt_jsonl)."""

from __future__ import annotations

import importlib.util
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from clusterlib import Cluster
from imagelib import built

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_spec = importlib.util.spec_from_file_location(
    "chart_install_body", Path(__file__).with_name("test_chart_install.py")
)
assert _spec is not None and _spec.loader is not None
chart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(chart)
jobs_namespace = chart.jobs_namespace  # the fixture
REPO = Path(__file__).resolve().parents[2]


def _split(ref: str) -> dict[str, str]:
    repo, _, tag = ref.rpartition(":")
    return {"repository": repo, "tag": tag}


def test_quickstart_inside_the_images(
    cluster: Cluster, namespace: str, jobs_namespace: str, s3: Any, tiny_fixtures: None
) -> None:
    refs = built("operator", "trainer")
    values = {
        "image": {**_split(refs["operator"]), "pullPolicy": "Never"},
        "trainer": {"image": _split(refs["trainer"])},
    }
    jobs_ns, release_ns = jobs_namespace, namespace

    def pods_in(ns: str, selector: str) -> list[dict[str, Any]]:
        return [p for p in cluster.pods(ns, selector) if p.get("status")]

    def ran_in_image(pod: dict[str, Any], image: str) -> None:
        assert pod["spec"]["containers"][0]["image"] == image
        for cs in pod["status"].get("containerStatuses") or []:
            assert cs["containerID"].startswith("podman://"), (pod["metadata"]["name"], cs)

    def after_success(ftj: dict[str, Any]) -> None:
        (op,) = pods_in(release_ns, "app.kubernetes.io/instance=" + chart.RELEASE)
        ran_in_image(op, refs["operator"])
        # The chart's security context reached the container (the image's user is the chart's).
        sc = op["spec"]["containers"][0]["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        trainers = [
            p for p in pods_in(jobs_ns, "")
            if p["metadata"].get("labels", {}).get("job-name", "").startswith(
                ftj["metadata"]["name"])
        ]  # fmt: skip
        assert trainers, "no trainer pod left to inspect"
        for p in trainers:
            ran_in_image(p, refs["trainer"])

    def corrupt_data_fails_fast() -> None:
        key = f"bad/{uuid.uuid4().hex[:8]}/train.jsonl"
        s3.put_object(Bucket=cluster.s3_bucket, Key=key, Body=b'{"text": "ok"}\n{not json\n')
        uri = f"s3://{cluster.s3_bucket}/{key}"
        ftj = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
        ftj["metadata"]["name"] = "corrupt-in-image"
        ftj["spec"]["dataset"]["s3Uri"] = uri
        t0 = time.monotonic()
        cluster.apply(ftj, jobs_ns)

        def finished() -> dict[str, Any] | None:
            st = (
                cluster.kubectl_json("get", "ftj", "corrupt-in-image", namespace=jobs_ns).get(
                    "status"
                )
                or {}
            )
            return st if st.get("phase") in ("Failed", "Succeeded") else None

        st = cluster.wait_for(finished, timeout=300, what="the corrupt-data job to fail")
        took = time.monotonic() - t0
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert st["phase"] == "Failed" and ready["reason"] == "DatasetError", st
        # The message the trainer gives outside the image (test_trainer_errors.py).
        assert uri in ready["message"] and "line 2: invalid JSON" in ready["message"], ready
        pods = [
            p for p in pods_in(jobs_ns, "")
            if p["metadata"].get("labels", {}).get("job-name", "").startswith("corrupt-in-image")
        ]  # fmt: skip
        assert len(pods) == 1, "a non-retryable error must not be retried"
        ran_in_image(pods[0], refs["trainer"])
        print(f"\n[images] corrupt-data job failed after {took:.0f}s")
        s3.delete_object(Bucket=cluster.s3_bucket, Key=key)

    chart.install_and_train_quickstart(
        cluster, release_ns, jobs_ns, s3,
        extra_values=values, after_success=after_success,
        before_uninstall=corrupt_data_fails_fast,
    )  # fmt: skip
