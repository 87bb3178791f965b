#!/usr/bin/env python3
"""S3 transfer benchmark: kubetune's upload/download code against s5cmd and plain boto3.

Every tool moves the same run directory (4 large safetensors-like shards of random bytes plus
small JSON files, `--size-mib` in all) to and from the same S3 endpoint, in the same process
run. Each round runs every tool's upload, then every tool's download, in an order rotated every
round (so no tool always goes first or last), and reports per tool and direction the median
(min-max) MB/s over the rounds and the ratio of its median to the best tool's median.

Downloads all read one source: the run directory as kubetune uploaded it in that round
(so kubetune's download sees the objects it writes in a run: per-part SHA-256 checksums and its
sha256 metadata, which it verifies; the other tools verify nothing).

What each tool does:
- kubetune: `S3.upload_dir` / `S3.download_prefix` of kubetune_trainer.s3, exactly what the
  trainer calls (the sha256 of every file, the checksums and the verification included);
- boto3: `client.upload_file` / `client.download_file` per file, one file after another, with
  boto3's default TransferConfig (what a plain script does);
- s5cmd: `s5cmd cp dir/ s3://...` and `s5cmd cp 's3://.../*' dir/` with its defaults
  (build: `hack/build-tools s5cmd`; the binary from `hack/build-tools paths`).
- mc is not built: the Go module proxy answers 403 for github.com/minio/mc's RELEASE.* versions
  (docs/benchmarks.md has the exact error).

Credentials and endpoint come from the environment (`eval "$(hack/cluster env)"` for the local
MinIO). MB is 10^6 bytes. Results go to stdout and, with --out, to a JSON file.

    python bench/transfer_bench.py --size-mib 2048 --rounds 5 --out bench/results/transfer-x.json
    python bench/transfer_bench.py --size-mib 16 --rounds 1            # CI-sized smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "trainer-image"))

MiB = 2**20
SMALL_FILES = {
    "config.json": 2_000,
    "generation_config.json": 300,
    "model.safetensors.index.json": 30_000,
    "special_tokens_map.json": 600,
    "tokenizer_config.json": 50_000,
    "tokenizer.json": 9_000_000,
    "adapter/adapter_config.json": 900,
    "metrics.json": 4_000,
}


def make_run_dir(root: Path, size_mib: int) -> int:
    """4 shards of random bytes (incompressible, like bf16 weights) + small JSON files."""
    small = sum(SMALL_FILES.values()) if size_mib >= 64 else 0
    shard = (size_mib * MiB - small) // 4
    for i in range(4):
        p = root / f"model-{i + 1:05d}-of-00004.safetensors"
        with open(p, "wb") as f:
            left = shard + i * 4097  # unequal sizes, none a multiple of a part size
            while left:
                n = min(left, 64 * MiB)
                f.write(os.urandom(n))
                left -= n
    if small:
        for rel, n in SMALL_FILES.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            body = json.dumps({"pad": "x" * max(0, n - 20)})
            p.write_text(body)
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def digests(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(8 * MiB):
                    h.update(chunk)
            out[p.relative_to(root).as_posix()] = h.hexdigest()
    return out


class Env:
    def __init__(self, args: argparse.Namespace) -> None:
        import boto3

        self.endpoint = args.endpoint or os.environ.get("AWS_ENDPOINT_URL")
        self.bucket = args.bucket
        self.region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region)
        self.s5cmd = args.s5cmd
        self.prefix = f"transfer-bench/{int(time.time())}-{os.getpid()}"

    def uri(self, *parts: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}/" + "/".join(parts)

    def delete(self, uri: str) -> None:
        key = uri.split("/", 3)[3]
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=key
        )
        for page in pages:
            objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if objs:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objs})


# --------------------------------------------------------------------------- tools


def kubetune_tool(env: Env) -> tuple[Callable[[Path, str], None], Callable[[str, Path], None]]:
    from kubetune_trainer.s3 import S3

    s3 = S3(endpoint=env.endpoint, region=env.region)

    def up(src: Path, uri: str) -> None:
        s3.upload_dir(src, uri)

    def down(uri: str, dest: Path) -> None:
        s3.download_prefix(uri, dest)

    return up, down


def boto3_tool(env: Env) -> tuple[Callable[[Path, str], None], Callable[[str, Path], None]]:
    c = env.client

    def up(src: Path, uri: str) -> None:
        key = uri.split("/", 3)[3]
        for p in sorted(src.rglob("*")):
            if p.is_file():
                c.upload_file(str(p), env.bucket, f"{key}/{p.relative_to(src).as_posix()}")

    def down(uri: str, dest: Path) -> None:
        key = uri.split("/", 3)[3] + "/"
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=env.bucket, Prefix=key):
            for o in page.get("Contents", []):
                out = dest / o["Key"][len(key) :]
                out.parent.mkdir(parents=True, exist_ok=True)
                c.download_file(env.bucket, o["Key"], str(out))

    return up, down


def s5cmd_tool(env: Env) -> tuple[Callable[[Path, str], None], Callable[[str, Path], None]]:
    base = [env.s5cmd, "--endpoint-url", str(env.endpoint), "--log", "error"]

    def run(*args: str) -> None:
        subprocess.run([*base, *args], check=True, stdout=subprocess.DEVNULL)

    def up(src: Path, uri: str) -> None:
        run("cp", f"{src}/", uri + "/")

    def down(uri: str, dest: Path) -> None:
        run("cp", uri + "/*", f"{dest}/")

    return up, down


TOOLS = {"kubetune": kubetune_tool, "boto3": boto3_tool, "s5cmd": s5cmd_tool}


def s5cmd_default() -> str | None:
    try:
        out = subprocess.run(
            [str(ROOT / "hack" / "build-tools"), "paths"], capture_output=True, text=True
        ).stdout
    except OSError:
        return None
    for line in out.splitlines():
        if line.startswith("KUBETUNE_S5CMD_BIN="):
            p = Path(line.split("=", 1)[1]) / "s5cmd"
            return str(p) if p.is_file() else None
    return None


# --------------------------------------------------------------------------- driver


def rotate(names: list[str], r: int) -> list[str]:
    k = r % len(names)
    return names[k:] + names[:k]


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for direction in ("upload", "download"):
        meds = {t: statistics.median(v[direction]) for t, v in samples.items() if v[direction]}
        best_tool = max(meds, key=lambda t: meds[t])
        out[direction] = {
            t: {
                "median_MBps": round(meds[t], 1),
                "min_MBps": round(min(samples[t][direction]), 1),
                "max_MBps": round(max(samples[t][direction]), 1),
                "ratio_vs_best": round(meds[t] / meds[best_tool], 3),
                "samples_MBps": [round(x, 1) for x in samples[t][direction]],
            }
            for t in meds
        }
        out[direction]["best"] = best_tool
        if "kubetune" in meds:
            others = [m for t, m in meds.items() if t != "kubetune"]
            if others:
                out[direction]["kubetune_vs_best_other"] = round(meds["kubetune"] / max(others), 3)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=2048, help="run directory size (MiB)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tools", default="kubetune,s5cmd,boto3")
    ap.add_argument("--endpoint", default=None, help="default: $AWS_ENDPOINT_URL")
    ap.add_argument("--bucket", default=os.environ.get("KUBETUNE_S3_BUCKET", "kubetune"))
    ap.add_argument("--s5cmd", default=None, help="s5cmd binary (default: hack/build-tools')")
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="before each timed transfer: sync, then wait this many seconds (the previous "
        "one's writeback and the server's deletes would otherwise land on the next tool)",
    )
    args = ap.parse_args()

    names = [t.strip() for t in args.tools.split(",") if t.strip()]
    if "s5cmd" in names:
        args.s5cmd = args.s5cmd or s5cmd_default()
        if not args.s5cmd:
            sys.exit("s5cmd not found: run `hack/build-tools s5cmd` or pass --s5cmd")
    if "kubetune" not in names:
        sys.exit("--tools must include kubetune (the downloads read kubetune's upload)")
    env = Env(args)
    work = Path(args.work or tempfile.mkdtemp(prefix="transfer-bench-"))
    src = work / "src"
    src.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    total = make_run_dir(src, args.size_mib)
    expected = digests(src)
    print(
        f"[bench] run dir: {len(expected)} files, {total / 1e6:.0f} MB "
        f"(made in {time.monotonic() - t0:.0f}s); endpoint {env.endpoint}",
        flush=True,
    )
    tools = {n: TOOLS[n](env) for n in names}
    samples: dict[str, dict[str, list[float]]] = {n: {"upload": [], "download": []} for n in names}

    def timed(fn: Callable[[], None]) -> float:
        os.sync()
        time.sleep(args.settle)
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t

    for r in range(args.rounds):
        order = rotate(names, r)
        # uploads (kubetune's is kept as the download source of this round)
        for n in order:
            dest = env.uri(f"r{r}", n)
            s = timed(lambda n=n, dest=dest: tools[n][0](src, dest))
            samples[n]["upload"].append(total / s / 1e6)
            print(f"[bench] round {r + 1} upload   {n:9s} {total / s / 1e6:8.1f} MB/s", flush=True)
            if n != "kubetune":
                env.delete(dest)
        source = env.uri(f"r{r}", "kubetune")
        # The same rotation as the uploads: over a multiple of len(tools) rounds every tool
        # takes every position equally often (the first download after the uploads meets the
        # server's deletes and the writeback of the uploads: measured, it cost 2-3x).
        for n in order:
            dest_dir = work / f"down-{n}"
            shutil.rmtree(dest_dir, ignore_errors=True)
            dest_dir.mkdir()
            s = timed(lambda n=n, d=dest_dir, u=source: tools[n][1](u, d))
            got = {
                p.relative_to(dest_dir).as_posix(): p.stat().st_size
                for p in dest_dir.rglob("*")
                if p.is_file()
            }
            if sorted(got) != sorted(expected) or sum(got.values()) != total:
                sys.exit(f"{n}: downloaded {len(got)} files, {sum(got.values())} bytes: wrong")
            if r == 0 and digests(dest_dir) != expected:
                sys.exit(f"{n}: downloaded files differ from the originals")
            samples[n]["download"].append(total / s / 1e6)
            print(f"[bench] round {r + 1} download {n:9s} {total / s / 1e6:8.1f} MB/s", flush=True)
            shutil.rmtree(dest_dir, ignore_errors=True)
        env.delete(source)

    result = {
        "benchmark": "transfer",
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "endpoint": env.endpoint,
        "files": len(expected),
        "bytes": total,
        "rounds": args.rounds,
        "settle_s": args.settle,
        "tools": names,
        "s5cmd": args.s5cmd,
        "results": summarize(samples),
    }
    if "kubetune" in names:
        import boto3
        from kubetune_trainer import s3 as ks3

        result["kubetune_settings"] = {
            "env": {k: v for k, v in os.environ.items() if k.startswith("KUBETUNE_S3_")},
            "defaults": getattr(ks3, "TRANSFER_DEFAULTS", {}),
            "boto3": boto3.__version__,
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
