"""The user docs (README, docs/install.md, docs/troubleshooting.md, docs/gitops.md) stay true to
the code: every status reason and exit code is explained, relative links resolve, and the
README's permission table is the chart's RBAC."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCS = ["README.md", "docs/install.md", "docs/troubleshooting.md", "docs/gitops.md"]


def read(rel: str) -> str:
    path = REPO / rel
    assert path.exists(), f"{rel} is missing"
    return path.read_text()


def test_troubleshooting_explains_every_reason() -> None:
    from kubetune_api.v1alpha1 import Reason

    doc = read("docs/troubleshooting.md")
    missing = [r.value for r in Reason if f"`{r.value}`" not in doc]
    assert not missing, f"reasons docs/troubleshooting.md does not explain: {missing}"


def test_troubleshooting_explains_every_trainer_exit_code() -> None:
    design = read("docs/design.md")
    doc = read("docs/troubleshooting.md")
    exit_codes = design.split("**Exit codes**", 1)[1].split("\n- ", 1)[0]
    pairs = re.findall(r"(\d+) `([A-Za-z]+)`", exit_codes)
    assert len(pairs) >= 5, exit_codes
    for code, reason in pairs:
        assert re.search(rf"^\| {code} \| `{reason}` \|", doc, re.M), f"exit code {code} {reason}"
    reasons = design.split("Reasons:", 1)[1].split("\n- ", 1)[0]
    for reason in re.findall(r"`([A-Za-z]+)`", reasons):
        assert f"`{reason}`" in doc, reason


@pytest.mark.parametrize("rel", DOCS)
def test_relative_links_resolve(rel: str) -> None:
    text = read(rel)
    base = (REPO / rel).parent
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"^[a-z]+://", target) or target.startswith("mailto:"):
            continue
        assert (base / target).exists(), f"{rel}: broken link {target}"


def test_readme_permission_table_is_the_install_table() -> None:
    readme = read("README.md")
    assert "<!-- rbac-table -->" in readme, "README.md lost its permission table"
    install = read("docs/install.md")
    assert (
        readme.split("<!-- rbac-table -->")[1].strip()
        == install.split("<!-- rbac-table -->")[1].strip()
    )


def test_readme_walks_a_newcomer_through() -> None:
    readme = read("README.md")
    for needle in (
        "helm install kubetune ./helm/kubetune",
        "create secret generic s3-credentials",
        "AWS_ACCESS_KEY_ID",
        "kubectl apply -n team-a -f examples/quickstart.yaml",
        "kubectl get ftj -n team-a -w",
        "kubectl describe ftj",
        "aws s3 ls",
        "boto3",
        "vllm serve ./merged",
        "--load-format runai_streamer",
        "(docs/api.md)",
        "(docs/troubleshooting.md)",
        "Deleting a FineTuneJob keeps its artifacts",
    ):
        assert needle in readme, needle


def test_readme_artifact_paths_follow_the_layout() -> None:
    """The S3 paths the README shows are where the trainer writes (config.run_prefix)."""
    from kubetune_api.v1alpha1 import run_prefix

    readme = read("README.md")
    uid = "3f2a9c1e-5b7d-4c1a-9e2f-0123456789ab"
    prefix = run_prefix("s3://kubetune/output", "team-a", "quickstart", uid, 1)
    assert prefix == "s3://kubetune/output/team-a/quickstart/3f2a9c1e/run-1/"
    for sub in ("adapter/", "merged/", "manifest.json"):
        assert prefix + sub in readme, sub
    quickstart = read("examples/quickstart.yaml")
    assert "uri: s3://kubetune/output" in quickstart
