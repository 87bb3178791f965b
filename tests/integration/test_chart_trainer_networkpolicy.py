"""The chart's opt-in trainer egress NetworkPolicy is accepted by the real API server."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from clusterlib import Cluster

pytestmark = pytest.mark.integration

CHART = Path(__file__).resolve().parents[2] / "helm" / "kubetune"


def test_trainer_networkpolicy_is_accepted_by_the_api_server(
    cluster: Cluster, namespace: str
) -> None:
    values = {
        "enabled": True,
        "namespaces": [namespace],
        "s3": {"cidrs": ["10.1.0.0/16"], "ports": [9000]},
        "hub": {"cidrs": ["0.0.0.0/0"], "ports": [443]},
        "tracking": {"cidrs": ["10.2.0.5/32"], "ports": [5000]},
    }
    out = subprocess.run(
        [cluster.helm_path, "template", "kt", str(CHART), "--namespace", namespace,
         "--set-json", f"trainerNetworkPolicy={json.dumps(values)}",
         "--show-only", "templates/trainer-networkpolicy.yaml"],
        capture_output=True, text=True, check=True, env=cluster.process_env(), timeout=120,
    ).stdout  # fmt: skip
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in docs] == ["NetworkPolicy"]
    res = cluster.kubectl(
        "apply", "--dry-run=server", "-o", "json", "-f", "-", namespace=namespace, input=out
    )
    applied = json.loads(res.stdout)
    assert applied["kind"] == "NetworkPolicy"
    assert applied["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == (
        "kubetune-trainer"
    )
    assert len(applied["spec"]["egress"]) == 6
