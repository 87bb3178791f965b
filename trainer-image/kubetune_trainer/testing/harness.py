"""Run `kubetune-train` as a real subprocess from tests and the demo: build a TrainerConfig
around a spec, start the trainer, collect exit code, log and termination message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import TrainerConfig, run_prefix


def trainer_config(
    spec: dict[str, Any],
    *,
    name: str,
    namespace: str = "default",
    run: int = 1,
    work_dir: str | os.PathLike[str],
    report_progress: bool = False,
    progress_interval_seconds: float = 1.0,
    checkpoint_prefix: str | None = None,
    uid: str | None = None,
    s3_retry_seconds: float | None = None,
) -> dict[str, Any]:
    """A validated TrainerConfig (wire form) as the operator would write it. Each call is a
    new FineTuneJob object (a fresh uid) unless `uid` is given."""
    out = spec["output"]["uri"]
    uid = uid or str(uuid.uuid4())
    cfg: dict[str, Any] = {
        "apiVersion": "kubetune.io/v1alpha1",
        "job": {"namespace": namespace, "name": name, "uid": uid, "run": run},
        "spec": spec,
        "runPrefix": run_prefix(out, namespace, name, uid, run),
        "reportProgress": report_progress,
        "progressIntervalSeconds": progress_interval_seconds,
        "workDir": str(work_dir),
    }
    if checkpoint_prefix:
        cfg["checkpointPrefix"] = checkpoint_prefix
    if s3_retry_seconds is not None:
        cfg["s3RetrySeconds"] = s3_retry_seconds
    TrainerConfig.model_validate(cfg)
    return cfg


@dataclass
class TrainerRun:
    returncode: int
    output: str
    termination: dict[str, Any] | None
    seconds: float

    def lines(self, needle: str) -> list[str]:
        return [line for line in self.output.splitlines() if needle in line]


def trainer_command() -> list[str]:
    exe = Path(sys.executable).with_name("kubetune-train")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "kubetune_trainer"]


def start(
    config: dict[str, Any], tmp: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], Path, Path]:
    """Start the trainer; returns (process, termination file, log file)."""
    tmp.mkdir(parents=True, exist_ok=True)
    cfg_path = tmp / "config.json"
    cfg_path.write_text(json.dumps(config, indent=1))
    term = tmp / "termination-log"
    term.unlink(missing_ok=True)
    log = tmp / "trainer.log"
    full_env = {**os.environ, **(env or {})}
    full_env["KUBETUNE_TERMINATION_LOG"] = str(term)
    f = open(log, "w")  # noqa: SIM115 - handed to the child, closed in finish()
    proc = subprocess.Popen(
        [*trainer_command(), "--config", str(cfg_path)],
        stdout=f,
        stderr=subprocess.STDOUT,
        env=full_env,
        text=True,
    )
    proc._kubetune_log = f  # type: ignore[attr-defined]
    return proc, term, log


def wait_for_log(proc: subprocess.Popen[str], log: Path, text: str, seconds: float) -> None:
    """Until the running trainer's log contains `text`; fails when it exits first or the time
    runs out (with the log's tail)."""
    deadline = time.monotonic() + seconds
    while text not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} in the log within {seconds:.0f}s"
        time.sleep(0.05)


def finish(
    proc: subprocess.Popen[str], term: Path, log: Path, t0: float, timeout: float
) -> TrainerRun:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc._kubetune_log.close()  # type: ignore[attr-defined]
    termination = json.loads(term.read_text()) if term.is_file() and term.read_text() else None
    return TrainerRun(
        returncode=proc.returncode,
        output=log.read_text(errors="replace"),
        termination=termination,
        seconds=time.monotonic() - t0,
    )


def run(
    config: dict[str, Any], tmp: Path, env: dict[str, str] | None = None, timeout: float = 600
) -> TrainerRun:
    t0 = time.monotonic()
    proc, term, log = start(config, tmp, env)
    return finish(proc, term, log, t0, timeout)
