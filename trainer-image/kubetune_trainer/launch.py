"""The pod's launcher: start this pod's training processes through torchrun (PyTorch's own
elastic launcher) and exit with a code that keeps the trainer's contract.

    kubetune-train --config C --nproc-per-node 2                       (one pod, 2 processes)
    kubetune-train --config C --nproc-per-node 8 --nnodes 2 --node-rank 1 \
        --rdzv-endpoint job-run-1-0.job-run-1:29400 --rdzv-id <uid>-1  (one of 2 pods)

torchrun exits 1 whatever its workers exit with, which would turn a bad config (exit 10,
not retryable, docs/design.md) into a retry. `exit_code` maps the workers' codes back.
Rank 0 alone writes the termination message (it is in this container, so the pod's status
carries it); the launcher writes nothing of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("kubetune")


@dataclass(frozen=True)
class Topology:
    nproc_per_node: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None
    rdzv_id: str = "kubetune"

    @property
    def multi_node(self) -> bool:
        return self.nnodes > 1


def torchrun_args(topo: Topology, trainer_argv: list[str]) -> list[str]:
    """torchrun's arguments: standalone on one pod, static rendezvous on index 0 across pods.
    No elastic restarts inside the pod: a failed process fails the pod, and the Job restarts
    the group (every pod), which resumes from the last checkpoint."""
    args = [f"--nproc-per-node={topo.nproc_per_node}", "--max-restarts=0"]
    if topo.multi_node:
        if not topo.rdzv_endpoint:
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint")
        args += [
            f"--nnodes={topo.nnodes}",
            f"--node-rank={topo.node_rank}",
            # Static rendezvous: the pod of index 0 (node rank 0) hosts the store at the
            # endpoint, and global ranks follow the node rank (node_rank x nproc + local rank),
            # so global rank 0, which saves, uploads and writes the result, is always on index
            # 0, the pod the operator reads. c10d ranks processes in the order they join, which
            # put rank 0 on index 1 in some runs: that pod succeeded alone, index 0 found no
            # result and the group hung. The Job restarts the whole group, so elastic
            # membership (c10d's reason to exist) is not needed.
            "--rdzv-backend=static",
            f"--rdzv-endpoint={topo.rdzv_endpoint}",
            f"--rdzv-id={topo.rdzv_id}",
        ]
    else:
        args.append("--standalone")
    return [*args, "-m", "kubetune_trainer", *trainer_argv]


def exit_code(codes: dict[int, int]) -> int:
    """The pod's exit code from the workers' ones (global rank -> exit code): 0 if all
    succeeded; a non-retryable trainer code (10-19) if any rank has one (the lowest rank's),
    else a retryable trainer code (20-29); 143 if a rank was terminated (SIGTERM: eviction,
    deletion); else 1 (retryable)."""
    failed = {r: c for r, c in sorted(codes.items()) if c != 0}
    if not failed:
        return 0
    for c in failed.values():
        if 10 <= c <= 19:
            return c
    for c in failed.values():
        if 20 <= c <= 29:  # a retryable trainer code with a reason (20: StorageUnavailable)
            return c
    if any(c in (143, -15) for c in failed.values()):
        return 143
    return 1


def launch(topo: Topology, trainer_argv: list[str]) -> int:
    """Run torchrun in this process and return the pod's exit code."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = torchrun_args(topo, trainer_argv)
    log.info("launching: torchrun %s", " ".join(args))
    try:
        torchrun.run(torchrun.parse_args(args))
    except ChildFailedError as e:
        codes = {int(rank): int(f.exitcode) for rank, f in e.failures.items()}
        code = exit_code(codes)
        log.error("training processes failed (rank: exit code) %s -> exit %d", codes, code)
        return code
    except SignalException as e:
        log.warning("launcher stopped by %s; a new pod group resumes from the checkpoint", e.sigval)
        return 143
    if topo.node_rank == 0 and not _succeeded():
        # torchrun returns normally when the group's rendezvous was closed by a failing peer:
        # rank 0 then never trained to the end. Exit 0 would read as a broken trainer (no
        # result); exit 1 restarts the group, which resumes from the last checkpoint.
        log.error("training processes stopped without a result (a peer failed); exit 1")
        return 1
    return 0


def _succeeded() -> bool:
    """Whether rank 0 wrote a Succeeded termination message in this pod."""
    import json

    from .result import termination_log_path

    try:
        with open(termination_log_path(), encoding="utf-8") as f:
            return bool(json.load(f).get("outcome") == "Succeeded")
    except (OSError, ValueError, AttributeError):
        return False
