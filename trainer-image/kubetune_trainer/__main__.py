"""kubetune-train: run one FineTuneJob run from its TrainerConfig.

    kubetune-train --config /etc/kubetune/config.json     (or KUBETUNE_CONFIG)
    accelerate launch -m kubetune_trainer --config ...     (several GPUs)

Exit codes and the termination message follow docs/design.md: 0 success; 10 ConfigError,
11 DatasetError, 12 ModelError, 13 NonFiniteLoss, 14 ArtifactsMissing, 15 StorageAccessDenied,
16 StorageConflict, 17 GpuOutOfMemory (not retryable); 20 StorageUnavailable and 1 anything
else (retryable: the next pod resumes from the last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from typing import Any

from kubetune_api.v1alpha1 import ConfigError, GpuOutOfMemory, TrainerError, TrainerFailure

from . import logs
from . import result as result_mod
from .oom import gpu_oom_message, is_gpu_oom

log = logging.getLogger("kubetune")


class Terminated(BaseException):
    """SIGTERM (eviction, preemption, deletion): stop now; the next pod resumes."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise Terminated()


def load_config(path: str | None) -> Any:
    from kubetune_api.v1alpha1 import TrainerConfig
    from pydantic import ValidationError

    if not path:
        raise ConfigError("no config: pass --config PATH or set KUBETUNE_CONFIG")
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    except FileNotFoundError as e:
        raise ConfigError(f"config file {path} not found") from e
    except (OSError, ValueError) as e:
        raise ConfigError(f"config file {path} is not readable JSON: {e}") from e
    try:
        return TrainerConfig.model_validate(raw)
    except ValidationError as e:
        problems = []
        for err in e.errors()[:5]:
            loc = ".".join(str(p) for p in err.get("loc", ()))
            problems.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        more = f" (+{e.error_count() - 5} more)" if e.error_count() > 5 else ""
        raise ConfigError(f"invalid config {path}: " + "; ".join(problems) + more) from e


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=os.environ.get("KUBETUNE_CONFIG"))
    parser.add_argument("--version", action="store_true", help="print version and commit, exit")
    parser.add_argument("--log-level", default=os.environ.get("KUBETUNE_LOG_LEVEL", "INFO"))
    parser.add_argument(
        "--output-dir",
        default=None,
        help="developers only: read s3:// sources from and write artifacts to this local "
        "directory (<dir>/<bucket>/<key>) instead of S3",
    )
    launcher = parser.add_argument_group(
        "launcher", "start several training processes through torchrun (launch.py)"
    )
    launcher.add_argument("--nproc-per-node", type=int, default=None)
    launcher.add_argument("--nnodes", type=int, default=1)
    launcher.add_argument(
        "--node-rank", type=int, default=int(os.environ.get("JOB_COMPLETION_INDEX", "0"))
    )
    launcher.add_argument("--rdzv-endpoint", default=None)
    launcher.add_argument("--rdzv-id", default="kubetune")
    args = parser.parse_args(argv)
    if args.version:
        from kubetune_api.version import version_line

        print(version_line("kubetune-train"))
        return 0
    if args.nproc_per_node is not None and "LOCAL_RANK" not in os.environ:
        return _launch(args)
    if args.output_dir:
        os.environ["KUBETUNE_LOCAL_ARTIFACTS"] = args.output_dir
    level = getattr(logging, str(args.log_level).upper(), logging.INFO)
    # Several processes (accelerate launch / torchrun): rank 0 tells the story, the others
    # speak up only for warnings and errors.
    if int(os.environ.get("RANK", "0")) != 0:
        level = max(level, logging.WARNING)
    logs.setup(level)
    if threading_main():
        signal.signal(signal.SIGTERM, _on_sigterm)
    is_main = int(os.environ.get("RANK", "0")) == 0
    code = 0
    res: dict[str, Any]
    try:
        from kubetune_api.extraca import ExtraCAError
        from kubetune_api.extraca import apply as apply_extra_ca

        try:
            apply_extra_ca()
        except ExtraCAError as e:
            raise ConfigError(str(e)) from e
        cfg = load_config(args.config)
        log.info(
            "kubetune-train: %s/%s run %d (task %s, method %s)",
            cfg.job.namespace,
            cfg.job.name,
            cfg.job.run,
            cfg.spec.task,
            cfg.spec.method.type,
        )
        if cfg.spec.dry_run:
            from .dryrun import run_dry

            res = run_dry(cfg)
            log.info("%s", res["message"])
            if is_main:
                result_mod.write(res)
            logging.shutdown()
            return 0
        from . import pipeline

        try:
            res = pipeline.run(cfg)
        except Exception as e:
            if not is_gpu_oom(e):
                raise
            hp = cfg.spec.hyperparameters
            raise GpuOutOfMemory(
                gpu_oom_message(
                    hp.batch_size,
                    hp.gradient_accumulation_steps,
                    cfg.spec.dataset.max_seq_length,
                    str(cfg.spec.method.type),
                )
            ) from e
        log.info("succeeded: %s", res.get("message"))
    except TrainerFailure as e:
        code = e.exit_code
        log.error("%s: %s", e.reason, e.message)
        if e.reason == TrainerError.reason:
            log.error("%s", traceback.format_exc())
        res = result_mod.build(
            outcome="Failed", reason=e.reason, message=e.message, retryable=e.retryable
        )
    except Terminated:
        code = 143
        log.warning("terminated (SIGTERM); a new pod resumes from the last complete checkpoint")
        res = result_mod.build(
            outcome="Failed",
            reason=TrainerError.reason,
            message="terminated by SIGTERM; resumes from the last complete checkpoint",
            retryable=True,
        )
    except Exception as e:
        code = TrainerError.exit_code
        log.error("unexpected error: %s\n%s", e, traceback.format_exc())
        res = result_mod.build(
            outcome="Failed",
            reason=TrainerError.reason,
            message=logs.redact(f"{type(e).__name__}: {e}")[:2000],
            retryable=True,
        )
    if is_main:
        res["message"] = logs.redact(str(res.get("message", "")))
        result_mod.write(res)
    logging.shutdown()
    return code


def _launch(args: argparse.Namespace) -> int:
    """This process is the pod's launcher: torchrun starts the training processes, which run
    `main` again with the trainer's own arguments only."""
    from .launch import Topology, launch

    logs.setup(getattr(logging, str(args.log_level).upper(), logging.INFO))
    trainer_argv = ["--log-level", str(args.log_level)]
    if args.config:
        trainer_argv += ["--config", args.config]
    if args.output_dir:
        trainer_argv += ["--output-dir", args.output_dir]
    topo = Topology(
        nproc_per_node=args.nproc_per_node,
        nnodes=args.nnodes,
        node_rank=args.node_rank,
        rdzv_endpoint=args.rdzv_endpoint,
        rdzv_id=args.rdzv_id,
    )
    return launch(topo, trainer_argv)


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


if __name__ == "__main__":
    sys.exit(main())
