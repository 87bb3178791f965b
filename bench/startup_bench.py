#!/usr/bin/env python3
"""Time to first step for a base model in S3 (issue 19 floor 3), through `kubetune-train`.

Three cases on the same model, rows and spec, each a fresh `kubetune-train` process, in an order
rotated every round:

- `s3`: `spec.model.s3Uri` with an empty model cache: kubetune's own download (sha256 of every
  file while it streams, checked against the object), then the load, the model built on the
  device;
- `s5cmd`: `s5cmd cp 's3://.../*' dir/` (v2.3.0 defaults; verifies nothing), then
  `kubetune-train` with `spec.model.pvc` on that directory: s5cmd's wall time plus the
  trainer's time to first step;
- `cache-hit`: `s3` again on the cache the `s3` case of the same round filled (a retry, or the
  next run of the job): the log must say "model cache hit", and nothing is downloaded.

The instrument is the trainer's own: `speed.startup` of the run's manifest (from the trainer's
start to the end of the first optimizer step, and the model resolve/load parts of it), read
back from S3. Python's start and imports before the trainer's clock starts are the same on
every side. Output: one JSON line per case and round (`--out` appends; a call cut short keeps
the finished cases), then the medians and `s3 / s5cmd` (< 1.0: kubetune starts sooner).

S3: `AWS_ENDPOINT_URL` and credentials from the environment (`eval "$(hack/cluster env)"`), or
`--minio BIN` starts a MinIO on a free loopback port with its data under `--root`.

    python bench/startup_bench.py --model tiny --steps 2 --rounds 1           # CPU wiring check
    python bench/startup_bench.py --model 8b --rounds 2 --minio ./minio --s5cmd ./s5cmd \\
        --root /tmp/sb --out $OUT/startup.jsonl                                # on the GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "trainer-image"))
sys.path.insert(0, str(REPO / "bench"))

from transfer_bench import s5cmd_default  # noqa: E402

BUCKET = "bench"
CASES = ("s3", "s5cmd", "cache-hit")


def start_minio(binary: str, data: Path) -> subprocess.Popen[bytes]:
    """A MinIO on a free loopback port; sets AWS_* in this process's environment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MINIO_ROOT_USER": "benchadmin", "MINIO_ROOT_PASSWORD": "benchadmin123"}
    proc = subprocess.Popen(
        [binary, "server", str(data), "--address", f"127.0.0.1:{port}", "--quiet"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.environ.update(
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        AWS_ACCESS_KEY_ID="benchadmin",
        AWS_SECRET_ACCESS_KEY="benchadmin123",
        AWS_DEFAULT_REGION="us-east-1",
    )
    for _ in range(100):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(0.5)  # listening is not yet serving
                return proc
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("MinIO did not start")


def spec_for(model: dict[str, Any], steps: int) -> dict[str, Any]:
    return {
        "task": "causal-lm",
        "model": model,
        "dataset": {
            "pvc": {"claimName": "data", "path": "/train.jsonl"},
            "format": "text",
            "maxSeqLength": 1024,
        },
        "method": {"type": "lora"},
        "hyperparameters": {
            "maxSteps": steps,
            "batchSize": 4,
            "loggingSteps": 1,
            "saveStrategy": "no",
        },
        "output": {"uri": f"s3://{BUCKET}/out", "checkpoints": False, "mergedModel": False},
        "tracking": {"reportTo": []},
    }


def run_trainer(root: Path, name: str, spec: dict[str, Any], cache: Path) -> dict[str, Any]:
    """One `kubetune-train` process; its manifest's speed.startup and the lines that matter."""
    from kubetune_trainer.s3 import S3, join
    from kubetune_trainer.testing.harness import trainer_config

    # a fresh name each time: output prefixes belong to one job (a re-run of the bench may not
    # write over an earlier run's artifacts, which the trainer refuses)
    name = f"{name}-{uuid.uuid4().hex[:6]}"
    cfg = trainer_config(spec, name=name, work_dir=root / "work" / name)
    path = root / f"{name}.json"
    path.write_text(json.dumps(cfg))
    env = {
        **os.environ,
        "KUBETUNE_PVC_ROOT": str(root / "pvc"),
        "KUBETUNE_MODEL_CACHE": str(cache),
        "KUBETUNE_TERMINATION_LOG": str(root / f"{name}.termination.json"),
        "PYTHONPATH": os.pathsep.join(
            [str(REPO / "trainer-image"), str(REPO / "api"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer", "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
    )
    out: dict[str, Any] = {"exit_code": proc.returncode, "process_s": time.perf_counter() - t0}
    log = proc.stdout + proc.stderr
    out["log"] = [
        ln for ln in log.splitlines() if "model cache" in ln or "time to first step" in ln
    ]
    if proc.returncode:
        out["log_tail"] = log[-3000:]
        return out
    manifest = json.loads(S3().get_bytes(join(cfg["runPrefix"], "manifest.json")))
    out["startup"] = manifest.get("speed", {}).get("startup", {})
    return out


def one_case(case: str, a: argparse.Namespace, n: int) -> dict[str, Any]:
    root: Path = a.root
    model_uri = f"s3://{BUCKET}/models/{a.model}"
    cache = root / "cache" / f"round-{n}"
    rec: dict[str, Any] = {"case": case, "round": n, "model": a.model}
    if case == "s5cmd":
        shutil.rmtree(root / "cache", ignore_errors=True)  # disk: one model copy at a time
        dest = root / "pvc" / "models" / "s5cmd"
        shutil.rmtree(dest, ignore_errors=True)
        t0 = time.perf_counter()
        subprocess.run(
            [
                a.s5cmd,
                "--endpoint-url",
                os.environ["AWS_ENDPOINT_URL"],
                "cp",
                f"{model_uri}/*",
                f"{dest}/",
            ],
            check=True,
            capture_output=True,
        )
        rec["s5cmd_s"] = time.perf_counter() - t0
        spec = spec_for({"pvc": {"claimName": "models", "path": "/s5cmd"}}, a.steps)
        rec.update(run_trainer(root, f"s5cmd-{n}", spec, root / "cache" / "unused"))
        shutil.rmtree(dest, ignore_errors=True)
    else:
        if case == "s3":
            shutil.rmtree(root / "cache", ignore_errors=True)  # this round's cache, empty
        elif not cache.exists():
            rec["skipped"] = "no cache from this round's s3 case"
            return rec
        spec = spec_for({"s3Uri": model_uri}, a.steps)
        rec.update(run_trainer(root, f"{case}-{n}", spec, cache))
        rec["cache_hit"] = any("model cache hit" in ln for ln in rec.get("log", []))
    first = rec.get("startup", {}).get("firstStepSeconds")
    if first is not None:
        rec["time_to_first_step_s"] = first + rec.get("s5cmd_s", 0.0)
    return rec


def prepare(a: argparse.Namespace) -> None:
    """The model (random weights, the published shape) and rows, once; the model into S3."""
    import torch
    from kubetune_trainer.s3 import S3
    from trainer_e2e import build_model_dir, write_rows

    local = a.root / "pvc" / "models" / "source"
    s3 = S3()
    try:
        s3.client.create_bucket(Bucket=BUCKET)
    except Exception as e:  # already there
        if "BucketAlready" not in type(e).__name__ + str(e):
            raise
    rows = a.root / "pvc" / "data" / "train.jsonl"
    if not rows.exists():
        write_rows(rows, 400, seed=0)
    if s3.list_objects(f"s3://{BUCKET}/models/{a.model}/"):
        return  # uploaded by an earlier run on this S3
    device = "cuda" if torch.cuda.is_available() else "cpu"
    build_model_dir(a.model, local, device)
    s3.upload_dir(local, f"s3://{BUCKET}/models/{a.model}")
    shutil.rmtree(local)  # disk: an 8B model is 16 GB; MinIO holds it now


def summarize(recs: list[dict[str, Any]]) -> dict[str, Any]:
    med = {}
    for case in CASES:
        xs = [
            r["time_to_first_step_s"]
            for r in recs
            if r["case"] == case and "time_to_first_step_s" in r
        ]
        if xs:
            med[case] = statistics.median(xs)
    summary: dict[str, Any] = {"median_time_to_first_step_s": med}
    if "s3" in med and "s5cmd" in med:
        summary["s3_over_s5cmd"] = med["s3"] / med["s5cmd"]
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="tiny", help="a shape of bench/trainer_bench_cases.py MODELS")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--root", type=Path, default=Path("/tmp/kubetune-startup"))
    p.add_argument("--minio", help="start this MinIO binary (else AWS_ENDPOINT_URL is used)")
    p.add_argument("--s5cmd", help="s5cmd binary (default: hack/build-tools', or PATH's)")
    p.add_argument("--out", type=Path)
    p.add_argument(
        "--cases",
        default=",".join(CASES),
        help="a subset of " + ",".join(CASES) + " (the CI test runs s3,cache-hit: no s5cmd there)",
    )
    a = p.parse_args()
    a.cases = [c for c in a.cases.split(",") if c]
    if unknown := set(a.cases) - set(CASES):
        sys.exit(f"--cases: unknown {sorted(unknown)}; choose from {','.join(CASES)}")
    a.s5cmd = a.s5cmd or s5cmd_default() or shutil.which("s5cmd")
    if "s5cmd" in a.cases and not a.s5cmd:
        sys.exit("s5cmd not found: run `hack/build-tools s5cmd` or pass --s5cmd")
    if not a.minio and not os.environ.get("AWS_ENDPOINT_URL"):
        sys.exit('no S3: pass --minio BIN, or set AWS_ENDPOINT_URL (eval "$(hack/cluster env)")')
    minio = start_minio(a.minio, a.root / "minio") if a.minio else None
    try:
        prepare(a)
        recs = []
        for n in range(a.rounds):
            k = n % 2  # s3 before its cache-hit, always; s5cmd first in every other round
            order = ["s5cmd", "s3", "cache-hit"] if k else ["s3", "cache-hit", "s5cmd"]
            for case in [c for c in order if c in a.cases]:
                rec = one_case(case, a, n)
                recs.append(rec)
                line = json.dumps(rec)
                print(line, flush=True)
                if a.out:
                    with a.out.open("a") as f:
                        f.write(line + "\n")
        summary = summarize(recs)
        print(json.dumps(summary), flush=True)
        if a.out:
            with a.out.open("a") as f:
                f.write(json.dumps({"summary": summary}) + "\n")
        return 0 if all(r.get("exit_code", 0) == 0 for r in recs) else 1
    finally:
        if minio is not None:
            minio.terminate()


if __name__ == "__main__":
    raise SystemExit(main())
