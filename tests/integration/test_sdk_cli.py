"""The kubetune CLI as a subprocess against the real API server: submit, list, suspend,
resume, cancel (suspend + kubetune.io/cancelled-at), and the exit codes for missing and
invalid objects. (No operator here: the phases are the operator's tests' business.)"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from shlex import quote as shlex_quote
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def crd(cluster: Any) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    cluster.wait_crd_established("finetunejobs.kubetune.io")


def kubetune(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubetune.cli", *args], text=True, capture_output=True, timeout=60
    )


def test_cli_lifecycle_on_the_real_api_server(cluster: Any, crd: None, namespace: str) -> None:
    example = REPO / "examples" / "chat-messages-sft.yaml"
    name = yaml.safe_load(example.read_text())["metadata"]["name"]

    r = kubetune("submit", "-f", str(example), "-n", namespace)
    assert r.returncode == 0, r.stderr
    assert f"finetunejob.kubetune.io/{name} created" in r.stdout

    r = kubetune("list", "-n", namespace)
    assert r.returncode == 0 and name in r.stdout

    def suspend_and_annotations() -> tuple[Any, dict[str, str]]:
        out = cluster.kubectl("get", "finetunejob", name, "-o", "json", namespace=namespace)
        obj = json.loads(out.stdout)
        return obj["spec"].get("runPolicy", {}).get("suspend"), obj["metadata"].get(
            "annotations", {}
        )

    assert kubetune("suspend", name, "-n", namespace).returncode == 0
    assert suspend_and_annotations()[0] is True
    assert kubetune("resume", name, "-n", namespace).returncode == 0
    assert suspend_and_annotations()[0] is False
    assert kubetune("cancel", name, "-n", namespace).returncode == 0
    suspended, annotations = suspend_and_annotations()
    assert suspended is True and "kubetune.io/cancelled-at" in annotations

    r = kubetune("get", "does-not-exist", "-n", namespace)
    assert r.returncode == 4 and "not found" in r.stderr


def test_cli_refuses_a_bad_spec_before_the_api_server(
    cluster: Any, crd: None, namespace: str, tmp_path: Path
) -> None:
    doc = yaml.safe_load((REPO / "examples" / "chat-messages-sft.yaml").read_text())
    doc["spec"]["model"] = {"name": 42}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    r = kubetune("submit", "-f", str(bad), "-n", namespace)
    assert r.returncode == 2
    assert "spec.model" in r.stderr
    out = cluster.kubectl("get", "finetunejobs", "-o", "name", namespace=namespace)
    assert out.stdout.strip() == ""


def test_artifacts_download_verifies_against_the_manifest_in_minio(
    cluster: Any, crd: None, namespace: str, s3: Any, tmp_path: Path
) -> None:
    """A run's files and manifest.json in MinIO, status.artifacts pointing at them (written here
    through the status subresource, as the operator would): `artifacts download --verify` gets
    every file and exits 0; after one object is overwritten in MinIO it exits 5 naming it."""
    import hashlib

    example = REPO / "examples" / "chat-messages-sft.yaml"
    name = yaml.safe_load(example.read_text())["metadata"]["name"]
    assert kubetune("submit", "-f", str(example), "-n", namespace).returncode == 0
    bucket = cluster.s3_bucket
    prefix = f"output/{namespace}/{name}/abcd1234/run-1"
    files = {"adapter/adapter_model.safetensors": b"\x00weights" * 1000, "metrics.json": b"{}"}
    for path, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{path}", Body=data)
    manifest = json.dumps(
        {
            "runPrefix": f"s3://{bucket}/{prefix}/",
            "files": [
                {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()}
                for p, d in sorted(files.items())
            ],
        }
    ).encode()
    s3.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json", Body=manifest)
    status = {
        "status": {
            "phase": "Succeeded",
            "artifacts": {
                "manifestUri": f"s3://{bucket}/{prefix}/manifest.json",
                "manifestSha256": hashlib.sha256(manifest).hexdigest(),
                "adapterUri": f"s3://{bucket}/{prefix}/adapter/",
            },
        }
    }
    cluster.kubectl(
        "patch",
        "finetunejob",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
        namespace=namespace,
    )

    dest = tmp_path / "good"
    r = kubetune("artifacts", "download", name, "-o", str(dest), "--verify", "-n", namespace)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 files" in r.stdout and "verified" in r.stdout
    got = (dest / "adapter" / "adapter_model.safetensors").read_bytes()
    assert got == files["adapter/adapter_model.safetensors"]
    assert kubetune("artifacts", "verify", str(dest)).returncode == 0

    # corrupt the object in MinIO (same size, one byte changed)
    bad = bytearray(files["adapter/adapter_model.safetensors"])
    bad[5] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=f"{prefix}/adapter/adapter_model.safetensors", Body=bytes(bad))
    r = kubetune("artifacts", "download", name, "-o", str(tmp_path / "bad"), "-n", namespace)
    assert r.returncode == 5, r.stdout + r.stderr
    assert "adapter/adapter_model.safetensors: sha256" in r.stderr

    # a local copy changed after download fails `artifacts verify`
    (dest / "metrics.json").write_bytes(b"{ }")
    r = kubetune("artifacts", "verify", str(dest))
    assert r.returncode == 5 and "metrics.json" in r.stderr

    # a manifest changed after the run wrote it is refused before any file is read
    s3.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json", Body=manifest + b" ")
    r = kubetune("artifacts", "download", name, "-o", str(tmp_path / "m"), "-n", namespace)
    assert r.returncode == 5 and "manifestSha256" in r.stderr


def test_estimate_reads_config_tokenizer_and_data_from_minio(
    cluster: Any, tiny_fixtures: None, s3: Any, tmp_path: Path
) -> None:
    """`kubetune estimate -f` on the quickstart: config.json and tokenizer from the model prefix
    (no weights), rows and tokens from the dataset; then a dataset with bad lines: exit 2 and
    each bad row named by line number and field."""
    r = kubetune("estimate", "-f", str(REPO / "examples" / "quickstart.yaml"), "--json")
    assert r.returncode == 0, r.stderr
    est = json.loads(r.stdout)
    rows = sum(
        1
        for line in _s3_text(s3, cluster.s3_bucket, "datasets/quickstart/train.jsonl").splitlines()
        if line.strip()
    )
    assert est["rows"] == rows and est["rowsExact"] is True
    assert est["stepsPerEpoch"] == -(-round(rows * 0.9) // 8)  # 10% validation, batch 8
    assert est["totalSteps"] == 30  # maxSteps
    assert est["tokensPerRowMean"] > 1 and est["trainableParams"] > 0
    assert est["gpuMemoryGiB"]["peak"] > 0 and est["gpuHours"] > 0

    good = json.dumps({"text": "a fine row"})
    lines = [good, good, '{"text": ""}', good, "{not json", good, '{"txt": "wrong column"}']
    s3.put_object(
        Bucket=cluster.s3_bucket,
        Key="datasets/bad/train.jsonl",
        Body=("\n".join(lines) + "\n").encode(),
    )
    doc = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    doc["spec"]["dataset"]["s3Uri"] = f"s3://{cluster.s3_bucket}/datasets/bad/train.jsonl"
    job = tmp_path / "bad.yaml"
    job.write_text(yaml.safe_dump(doc))
    r = kubetune("estimate", "-f", str(job))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "line 3: text: is empty" in r.stderr
    assert "line 5: (line): not a JSON object" in r.stderr
    assert "line 7: text: missing" in r.stderr, r.stderr


def _s3_text(s3: Any, bucket: str, key: str) -> str:
    return str(s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode())


# -- the whole path, as a user runs it: submit -> watch (in a terminal) -> download -> verify ---


def _tmux(sock: str, *args: str) -> str:
    return subprocess.run(
        ["tmux", "-L", sock, *args], text=True, capture_output=True, check=True, timeout=30
    ).stdout


STEPS = 120


def test_cli_submit_watch_download_verify_in_a_real_terminal(
    cluster: Any, namespace: str, operators: Any, tiny_fixtures: None, tmp_path: Path
) -> None:
    """The CLI as subprocesses against the real operator and trainer. `kubetune watch` runs in
    a tmux terminal (a real pty, 150 columns): the screen shows the Rich bar with the step
    count, loss, tokens/s and ETA while training, then the outcome; exit codes follow it."""
    import shutil
    import time

    if shutil.which("tmux") is None:
        pytest.fail("tmux is needed for the terminal check (apt-get install tmux)")
    operators.new(stub=False)
    # The quickstart's 30 steps can train in under a second on a fast CPU, inside one progress
    # interval (1 s here), so no mid-training bar would ever be sent. 120 steps (a few seconds)
    # make the bar this test is about observable on any machine; the rest is the example as is.
    manifest = yaml.safe_load((REPO / "examples" / "quickstart.yaml").read_text())
    manifest["spec"]["hyperparameters"]["maxSteps"] = STEPS
    manifest["spec"]["hyperparameters"]["loggingSteps"] = 1
    submitted = tmp_path / "quickstart.yaml"
    submitted.write_text(yaml.safe_dump(manifest))
    r = kubetune("submit", "-f", str(submitted), "-n", namespace)
    assert r.returncode == 0, r.stderr

    script = tmp_path / "watch.sh"
    env = {k: v for k, v in cluster.process_env().items() if k.isidentifier()}
    exports = "".join(f"export {k}={shlex_quote(v)}\n" for k, v in env.items())
    script.write_text(
        f"{exports}{sys.executable} -m kubetune.cli watch quickstart -n {namespace}"
        " --timeout 900\necho EXIT=$?\nsleep 600\n"
    )
    sock = f"kt-{namespace[-5:]}"
    _tmux(sock, "new-session", "-d", "-s", "w", "-x", "150", "-y", "20", f"bash {script}")
    screens: list[str] = []
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            screen = _tmux(sock, "capture-pane", "-p", "-t", "w")
            if not screens or screen != screens[-1]:
                screens.append(screen)
            if "EXIT=" in screen:
                break
            time.sleep(0.5)
    finally:
        subprocess.run(["tmux", "-L", sock, "kill-server"], check=False, timeout=30)
    final = screens[-1]
    assert "EXIT=0" in final and "quickstart: Succeeded" in final, final
    steps = [(int(m.group(1)), s) for s in screens if (m := re.search(rf"step (\d+)/{STEPS}\b", s))]
    training = [s for n, s in steps if 0 < n < STEPS]
    assert training, "\n----\n".join(screens[-5:])
    mid = training[-1]
    assert (
        re.search(r"loss \d+\.\d{4}", mid) and "tok/s" in mid and re.search(r"eta \d+:\d\d", mid)
    ), mid
    assert f"step {STEPS}/{STEPS}" in final and "100%" in final, final
    print(f"\n--- tmux screen while training ---\n{mid}\n--- at the end ---\n{final}")

    assert kubetune("wait", "quickstart", "-n", namespace, "--timeout", "30").returncode == 0
    logs = kubetune("logs", "quickstart", "-n", namespace)
    assert logs.returncode == 0 and "kubetune-train" in logs.stdout, logs.stdout[-2000:]
    dest = tmp_path / "artifacts"
    r = kubetune(
        "artifacts", "download", "quickstart", "-n", namespace, "-o", str(dest), "--verify"
    )
    assert r.returncode == 0 and "verified against manifest.json" in r.stdout, r.stdout + r.stderr
    assert list(dest.glob("adapter/*.safetensors")) and (dest / "manifest.json").is_file()
    assert kubetune("artifacts", "verify", str(dest)).returncode == 0
    weights = next(dest.glob("adapter/*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    r = kubetune("artifacts", "verify", str(dest))
    assert r.returncode == 5 and weights.name in r.stderr
