"""KUBETUNE_EXTRA_CA_BUNDLE at run time: the extra certificates are trusted beside the system
store by every client (ssl, requests, boto3, curl), an unset variable changes nothing, a bad
path fails with the variable's name and the fix."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest
from kubetune_api import extraca

PEM = ssl.DER_cert_to_PEM_cert(b"\x30\x03\x02\x01\x01")  # shape only: a PEM block


def test_unset_changes_nothing() -> None:
    env: dict[str, str] = {}
    assert extraca.apply(env) is None and env == {}


def test_bundle_is_added_to_the_system_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    extra = tmp_path / "corp.pem"
    extra.write_text(PEM)
    env = {extraca.ENV: str(extra), "AWS_CA_BUNDLE": "/pod/own.pem"}
    path = extraca.apply(env)
    assert path is not None and path.parent == tmp_path
    data = path.read_text()
    assert data.endswith(PEM) and data.count("BEGIN CERTIFICATE") > 1, "system store kept"
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == env["CURL_CA_BUNDLE"] == str(path)
    assert env["AWS_CA_BUNDLE"] == "/pod/own.pem", "a variable the pod sets wins"
    assert (path.stat().st_mode & 0o077) == 0, "private file"


def test_missing_or_not_pem_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(extraca.ExtraCAError, match="KUBETUNE_EXTRA_CA_BUNDLE=/nope: cannot read"):
        extraca.apply({extraca.ENV: "/nope"})
    bad = tmp_path / "x.pem"
    bad.write_text("hello")
    with pytest.raises(extraca.ExtraCAError, match="no PEM certificate"):
        extraca.apply({extraca.ENV: str(bad)})


def test_trainer_fails_as_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune_trainer.__main__ import main

    monkeypatch.setenv(extraca.ENV, "/nope")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / "term"))
    assert main(["--config", str(tmp_path / "c.json")]) == 10
    term = json.loads((tmp_path / "term").read_text())
    assert term["reason"] == "ConfigError" and "KUBETUNE_EXTRA_CA_BUNDLE=/nope" in term["message"]
