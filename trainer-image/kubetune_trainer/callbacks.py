"""TrainerCallbacks: one log line per logging step, live progress, checkpoints to S3."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .checkpoints import CheckpointStore
from .logs import STARTUP
from .progress import ProgressReporter

log = logging.getLogger("kubetune.train")


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


NOISY = ("runtime", "per_second", "preparation_time", "num_tokens", "entropy", "epoch")


def noisy(key: str) -> bool:
    """Metrics left out of the one-line log (still in metrics.json and TensorBoard)."""
    return any(n in key for n in NOISY)


class Throughput:
    """Tokens/s and ETA from the trainer state, measured from the first step of this process
    (a resumed run does not count the steps it inherited)."""

    def __init__(self) -> None:
        self.t0: float | None = None
        self.step0 = 0
        self.tokens0 = 0

    def start(self, state: Any) -> None:
        self.t0 = time.monotonic()
        self.step0 = state.global_step
        self.tokens0 = int(getattr(state, "num_input_tokens_seen", 0) or 0)

    def measure(self, state: Any) -> tuple[float | None, float | None]:
        if self.t0 is None:
            return None, None
        dt = time.monotonic() - self.t0
        steps = state.global_step - self.step0
        if dt <= 0 or steps <= 0:
            return None, None
        tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0) - self.tokens0
        tps = tokens / dt if tokens > 0 else None
        eta = (state.max_steps - state.global_step) * dt / steps if state.max_steps else None
        return tps, eta


class ConsoleLogCallback(TrainerCallback):
    """`step 20/100 epoch 0.40 loss 1.2345 lr 1.8e-04 grad_norm 0.91 tok/s 5321 eta 1m10s`."""

    def __init__(self, throughput: Throughput) -> None:
        self.tp = throughput

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.tp.t0 is None:
            self.tp.start(state)
        if state.is_world_process_zero:
            log.info(
                "training: %d steps planned, starting at step %d",
                state.max_steps,
                state.global_step,
            )

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if "firstStepSeconds" in STARTUP or "t0" not in STARTUP:
            return
        STARTUP["firstStepSeconds"] = round(time.monotonic() - STARTUP["t0"], 2)
        if state.is_world_process_zero:
            log.info(
                "time to first step: %.1fs after the trainer started (model resolve %.1fs, "
                "load %.1fs)",
                STARTUP["firstStepSeconds"],
                STARTUP.get("modelResolveSeconds", 0.0),
                STARTUP.get("modelLoadSeconds", 0.0),
            )

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        parts = [f"step {state.global_step}/{state.max_steps}"]
        if state.epoch is not None:
            parts.append(f"epoch {state.epoch:.2f}")
        if any(k.startswith("eval_") for k in logs):
            for k, v in logs.items():
                if k.startswith("eval_") and isinstance(v, int | float) and not noisy(k):
                    parts.append(f"{k} {v:.4f}")
            log.info(" ".join(parts))
            return
        if "loss" in logs:
            parts.append(f"loss {logs['loss']:.4f}")
        if "learning_rate" in logs:
            parts.append(f"lr {logs['learning_rate']:.2e}")
        if "grad_norm" in logs and logs["grad_norm"] is not None:
            parts.append(f"grad_norm {logs['grad_norm']:.3f}")
        tps, eta = self.tp.measure(state)
        if tps is not None:
            parts.append(f"tok/s {tps:.0f}")
        if eta is not None:
            parts.append(f"eta {fmt_duration(eta)}")
        if "train_loss" in logs:
            parts.append(f"train_loss {logs['train_loss']:.4f}")
        log.info(" ".join(parts))


class ProgressCallback(TrainerCallback):
    """Feeds the ProgressReporter (which rate-limits the API patches)."""

    def __init__(self, reporter: ProgressReporter, throughput: Throughput) -> None:
        self.reporter = reporter
        self.tp = throughput

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.tp.t0 is None:
            self.tp.start(state)
        if state.is_world_process_zero:
            self.reporter.update(
                force=True, stage="train", step=state.global_step, total_steps=state.max_steps
            )

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        tps, eta = self.tp.measure(state)
        fields: dict[str, Any] = {
            "step": state.global_step,
            "total_steps": state.max_steps,
            "epoch": round(float(state.epoch or 0.0), 4),
        }
        if isinstance(logs.get("loss"), int | float) and math.isfinite(logs["loss"]):
            fields["loss"] = float(logs["loss"])
        if isinstance(logs.get("learning_rate"), int | float):
            fields["learning_rate"] = float(logs["learning_rate"])
        if isinstance(logs.get("eval_loss"), int | float) and math.isfinite(logs["eval_loss"]):
            fields["eval_loss"] = float(logs["eval_loss"])
        if tps is not None:
            fields["tokens_per_second"] = round(tps, 1)
        if eta is not None:
            fields["eta_seconds"] = int(eta)
        self.reporter.update(**fields)


class S3CheckpointCallback(TrainerCallback):
    """After each local checkpoint: upload it, mark it COMPLETE, prune old ones."""

    def __init__(self, store: CheckpointStore) -> None:
        self.store = store

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if not local.is_dir():
            log.warning("checkpoint %s not found locally; not uploaded", local)
            return
        best = None
        if state.best_model_checkpoint:
            try:
                best = int(Path(state.best_model_checkpoint).name.split("-")[-1])
            except ValueError:
                best = None
        self.store.publish(local, state.global_step, best=best)
