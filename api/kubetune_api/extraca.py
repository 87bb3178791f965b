"""An extra CA bundle at run time (corporate TLS proxies, private S3 endpoints): when
KUBETUNE_EXTRA_CA_BUNDLE names a PEM file (mounted from a ConfigMap or Secret), both entry
points trust it *in addition to* the system store, for every client we use: Python's ssl
(SSL_CERT_FILE), requests / huggingface_hub (REQUESTS_CA_BUNDLE), boto3 (AWS_CA_BUNDLE) and curl
(CURL_CA_BUNDLE). A variable the pod already sets wins. The combined bundle is written to a
private temporary file, never into the image (the build takes the same bundle as a build secret).
Shared by the operator: no torch here.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import MutableMapping
from pathlib import Path

ENV = "KUBETUNE_EXTRA_CA_BUNDLE"
SYSTEM_BUNDLES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt")
TARGETS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "AWS_CA_BUNDLE", "CURL_CA_BUNDLE")


class ExtraCAError(ValueError):
    pass


def _system_bundle() -> bytes:
    for p in SYSTEM_BUNDLES:
        try:
            return Path(p).read_bytes()
        except OSError:
            continue
    try:
        import certifi

        return Path(certifi.where()).read_bytes()
    except (ImportError, OSError):
        return b""


def apply(env: MutableMapping[str, str] | None = None) -> Path | None:
    """Set the CA variables from KUBETUNE_EXTRA_CA_BUNDLE; returns the combined bundle's path
    (None when the variable is unset). Raises ExtraCAError naming the variable and the fix."""
    env = os.environ if env is None else env
    extra_path = env.get(ENV, "").strip()
    if not extra_path:
        return None
    try:
        extra = Path(extra_path).read_bytes()
    except OSError as e:
        raise ExtraCAError(
            f"{ENV}={extra_path}: cannot read it ({e.strerror}); mount the PEM bundle there "
            f"or unset {ENV}"
        ) from e
    if b"-----BEGIN CERTIFICATE-----" not in extra:
        raise ExtraCAError(
            f"{ENV}={extra_path}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)"
        )
    fd, name = tempfile.mkstemp(prefix="kubetune-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(_system_bundle().rstrip(b"\n") + b"\n" + extra)
    for var in TARGETS:
        env.setdefault(var, name)
    return Path(name)
