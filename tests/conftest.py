"""Shared pytest fixtures: the real local cluster (hack/cluster) and per-test namespaces.

Fixtures (integration tests only; unit tests must not use them):

``cluster`` (session)
    Runs ``hack/cluster up`` unless the cluster is already up, loads ``hack/cluster env`` into
    ``os.environ`` (KUBECONFIG, PATH with our kubectl/helm, AWS_*, KUBETUNE_S3_*), and returns a
    :class:`Cluster`. At the end of the session it runs ``hack/cluster down`` only if this session
    started the cluster, no other test session still uses it (pid files in $state/users) and
    ``KUBETUNE_KEEP_CLUSTER`` is not ``1``.

``namespace`` (function)
    A fresh namespace ``kt-<test name>-<random>`` deleted after the test.

``s3`` (session)
    A boto3 S3 client for MinIO (the bucket is ``cluster.s3_bucket``).

``kueue`` (session)
    Runs ``hack/cluster kueue-up`` (Kueue with its CRDs and loopback webhooks) on the cluster,
    and ``hack/cluster kueue-down`` at the end if this session started it. Only the Kueue tests
    ask for it, so the default test path does not run Kueue.

Fixtures of the middle tier (tests/middle: no cluster, runs in seconds):

``fake_kube`` (function)
    A :class:`fakekube.FakeKube`: the operator's own ``Kube`` client over an in-memory API
    server that records every (verb, resource) it serves.

``operator_settings`` (function)
    ``OperatorSettings`` for a test operator, independent of any ``KUBETUNE_*`` variable an
    integration test exported into the environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from clusterlib import (
    HACK_CLUSTER,
    Cluster,
    Users,
    apiserver_running,
    cluster_from_env,
    cluster_is_up,
    load_env,
    state_dir,
)
from fakekube import FakeKube

__all__ = ["Cluster", "cluster", "fake_kube", "kueue", "namespace", "operator_settings", "s3"]


@pytest.fixture
def fake_kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def operator_settings(monkeypatch: pytest.MonkeyPatch) -> Any:
    from kubetune_operator.settings import OperatorSettings

    for name in list(os.environ):
        if name.startswith("KUBETUNE_"):
            monkeypatch.delenv(name)
    return OperatorSettings(
        trainer_image="trainer:test", lease_namespace="kubetune-system", identity="op-0"
    )


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    users = Users(state_dir())
    users.register()
    started = False
    try:
        if not cluster_is_up():
            started = not apiserver_running()
            t0 = time.monotonic()
            proc = subprocess.run([str(HACK_CLUSTER), "up"], text=True, capture_output=True)
            if proc.returncode != 0:
                pytest.fail(f"hack/cluster up failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
            print(f"\n[cluster] hack/cluster up took {time.monotonic() - t0:.1f}s")
        env = load_env()
        os.environ.update(env)
        yield cluster_from_env(env, started_here=started)
    finally:
        users.unregister()
        if started and os.environ.get("KUBETUNE_KEEP_CLUSTER") != "1":
            others = users.others()
            if others:
                print(f"\n[cluster] left up: still used by test sessions {others}")
            else:
                subprocess.run([str(HACK_CLUSTER), "down"], check=False)


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"kt-{base}-{uuid.uuid4().hex[:5]}"
    cluster.kubectl("create", "namespace", name)
    # Pods need the namespace's default ServiceAccount (created by the controller-manager).
    cluster.wait_for(
        lambda: (
            cluster.kubectl(
                "get", "serviceaccount", "default", namespace=name, check=False
            ).returncode
            == 0
        ),
        timeout=30,
        interval=0.2,
        what=f"serviceaccount default in {name}",
    )
    try:
        yield name
    finally:
        with contextlib.suppress(Exception):
            cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def s3(cluster: Cluster) -> Any:
    return cluster.s3_client()


@pytest.fixture(scope="session")
def kueue(cluster: Cluster) -> Iterator[Cluster]:
    was_up = subprocess.run([str(HACK_CLUSTER), "status", "kueue"], capture_output=True)
    proc = subprocess.run([str(HACK_CLUSTER), "kueue-up"], text=True, capture_output=True)
    if proc.returncode != 0:
        pytest.fail(f"hack/cluster kueue-up failed:\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    try:
        yield cluster
    finally:
        if was_up.returncode != 0 and os.environ.get("KUBETUNE_KEEP_CLUSTER") != "1":
            subprocess.run([str(HACK_CLUSTER), "kueue-down"], check=False)


@pytest.fixture(scope="module")
def tiny_fixtures(cluster: Cluster) -> None:
    """The tiny model and datasets the examples read, in MinIO (the trainer's own uploader)."""
    subprocess.run(
        [sys.executable, "-m", "kubetune_trainer.testing.fixtures", "upload",
         "--bucket", cluster.s3_bucket],
        check=True, env=cluster.process_env(), capture_output=True, timeout=600,
    )  # fmt: skip
