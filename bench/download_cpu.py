#!/usr/bin/env python3
"""CPU per GB of one download, kubetune's against s5cmd's: the table "The CRC64-NVME download"
in docs/benchmarks.md.

Uploads a directory of 4 safetensors-like shards of random bytes (`--mib` in all) once, with
kubetune's uploader, then downloads it `--times` times with `S3.download_prefix` (what the
trainer calls) or `s5cmd cp`, and prints per download MB/s, the client's user and system CPU
seconds per GB (`getrusage`, children included) and, with `--server-pid`, the S3 server's CPU
seconds per GB (`/proc/<pid>/stat`). `KUBETUNE_S3_*` tune kubetune's side, as in the trainer.

    eval "$(hack/cluster env)"; hack/build-tools s5cmd
    python bench/download_cpu.py kubetune --times 3 --server-pid "$(pgrep -f 'minio server')"
    python bench/download_cpu.py s5cmd --times 3 --server-pid "$(pgrep -f 'minio server')"
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "trainer-image"))
sys.path.insert(0, str(HERE))

from transfer_bench import s5cmd_default  # noqa: E402


def client_cpu() -> tuple[float, float]:
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime


def server_cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prepare(s3: object, src: Path, uri: str, mib: int) -> int:
    """The shards (once) and their upload; returns the bytes."""
    sizes = [mib * k // 20 for k in (6, 5.5, 5, 3.5)]  # unequal, as real shards
    if not (src / "uploaded").exists():
        src.mkdir(parents=True, exist_ok=True)
        for i, n in enumerate(sizes):
            with open(src / f"model-{i}.safetensors", "wb") as f:
                for _ in range(int(n)):
                    f.write(os.urandom(2**20))
        s3.upload_dir(src, uri)  # type: ignore[attr-defined]
        (src / "uploaded").write_text(uri)
    return sum(p.stat().st_size for p in src.glob("*.safetensors"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("tool", choices=["kubetune", "s5cmd"])
    p.add_argument("--times", type=int, default=3)
    p.add_argument("--mib", type=int, default=2048)
    p.add_argument("--uri", default="s3://kubetune/download-cpu")
    p.add_argument("--root", type=Path, default=Path("/tmp/download-cpu"))
    p.add_argument("--server-pid", type=int, default=None)
    a = p.parse_args()
    from kubetune_trainer.s3 import S3

    s3 = S3()
    total = prepare(s3, a.root / "src", a.uri, a.mib)
    gb = total / 1e9
    out = a.root / "out"
    for _ in range(a.times):
        shutil.rmtree(out, ignore_errors=True)
        (u0, s0), m0, t0 = client_cpu(), server_cpu(a.server_pid), time.perf_counter()
        if a.tool == "s5cmd":
            endpoint = os.environ["AWS_ENDPOINT_URL"]
            cmd = [s5cmd_default() or "s5cmd", "--endpoint-url", endpoint, "--log", "error"]
            subprocess.run([*cmd, "cp", f"{a.uri}/*", f"{out}/"], check=True)
        else:
            s3.download_prefix(a.uri, out)
        seconds = time.perf_counter() - t0
        (u1, s1), m1 = client_cpu(), server_cpu(a.server_pid)
        print(
            f"{a.tool}: {gb * 1000 / seconds:7.0f} MB/s  client user {(u1 - u0) / gb:.2f} "
            f"system {(s1 - s0) / gb:.2f} s/GB  server {(m1 - m0) / gb:.2f} s/GB",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
