"""Unit tests of the node agent's pure helpers (no cluster needed)."""

from __future__ import annotations

from decimal import Decimal

import pytest
from nodeagent.util import expand, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("64Mi", Decimal(64 * 2**20)),
        ("1Gi", Decimal(2**30)),
        ("500m", Decimal("0.5")),
        ("2", Decimal(2)),
        ("1e3", Decimal(1000)),
        ("1.5G", Decimal(1_500_000_000)),
        ("128k", Decimal(128_000)),
    ],
)
def test_parse_quantity(text: str, value: Decimal) -> None:
    assert parse_quantity(text) == value


def test_parse_quantity_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_quantity("12 apples")


def test_expand_like_kubelet() -> None:
    env = {"A": "1", "B": "two"}
    assert expand("$(A)-$(B)", env) == "1-two"
    assert expand("$(MISSING)", env) == "$(MISSING)"  # unknown references stay as they are
    assert expand("$$(A)", env) == "$(A)"  # $$ escapes
    assert expand("cost: $5", env) == "cost: $5"


def test_mount_that_would_hide_the_host_checkout_is_detected() -> None:
    from pathlib import Path

    from nodeagent.podvolumes import hidden_host_path, host_paths_in_use

    needed = [Path("/tmp/ci/repo"), Path("/root/.cache/kubetune/cluster")]
    assert hidden_host_path("/tmp", needed) == Path("/tmp/ci/repo")
    assert hidden_host_path("/tmp/ci/repo", needed) == Path("/tmp/ci/repo")
    assert hidden_host_path("/root", needed) == Path("/root/.cache/kubetune/cluster")
    assert hidden_host_path("/workspace", needed) is None
    assert hidden_host_path("/tmp/ci/repo2", needed) is None
    in_use = host_paths_in_use(Path("/srv/state"))
    assert Path("/srv/state") in in_use and Path(__file__).resolve().parents[2] in in_use
