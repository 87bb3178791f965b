"""bench/product_bench.py's instrument, the same for both sides: each micro-batch's loss and real
(non-pad) token count kept on the device, one device sync at each optimizer step's end to stamp
the time, and torch.profiler over the steps after the timed ones."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class Recorder:
    """Per optimizer step: wall time (after a device sync), loss, real tokens."""

    def __init__(self, result_path: Path, timed_steps: int = 0, profile_steps: int = 0) -> None:
        self.path = result_path
        # Steps after the timed ones run under torch.profiler, one session per step
        # (on_step_end to on_step_end), summarized by step_profile.profile_summary.
        self.timed_steps = timed_steps
        self.profile_steps = profile_steps
        self.profiles: list[dict[str, Any]] = []
        self.prof: Any = None
        self.prof_t0 = 0.0
        self.losses: list[Any] = []
        self.tokens: list[Any] = []
        self.rows: list[dict[str, Any]] = []
        self.t0: float | None = None
        self.meta: dict[str, Any] = {}

    def _sync(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def attach(self, trainer: Any) -> Any:
        from transformers import TrainerCallback

        inner = trainer.compute_loss
        rec = self

        def compute_loss(model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            out = inner(model, inputs, *args, **kwargs)
            loss = out[0] if isinstance(out, tuple) else out
            rec.losses.append(loss.detach().float())
            mask = inputs.get("attention_mask")
            ids = inputs["input_ids"]
            rec.tokens.append(mask.sum() if mask is not None else ids.new_tensor(ids.numel()))
            return out

        trainer.compute_loss = compute_loss

        class Stamp(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                rec._sync()
                rec.t0 = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                rec._sync()
                t = time.perf_counter()
                losses, tokens = rec.losses, rec.tokens
                rec.losses, rec.tokens = [], []
                rec.rows.append(
                    {
                        "step": state.global_step,
                        "t": t - (rec.t0 or t),
                        # each micro-batch's loss is its token-loss sum over the whole step's
                        # token count (trl's num_items_in_batch): the step's loss is their sum
                        "loss": sum(float(x) for x in losses),
                        "tokens": int(sum(int(x) for x in tokens)),
                        "micro_batches": len(losses),
                    }
                )
                rec.profile_step(state.global_step)

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                rec.write()

        trainer.add_callback(Stamp())
        return trainer

    def profile_step(self, step: int) -> None:
        import torch
        from step_profile import bench_sync, profile_summary

        if not self.profile_steps or step < self.timed_steps:
            return
        cuda = torch.cuda.is_available()
        if self.prof is not None:
            bench_sync(cuda)
            wall = time.perf_counter() - self.prof_t0
            self.prof.stop()
            try:
                self.profiles.append({"step": step, **profile_summary(self.prof.events(), wall)})
            except Exception as e:  # a profiler failure must not cost the case
                self.profiles.append({"step": step, "error": repr(e)})
            self.prof = None
        if len(self.profiles) < self.profile_steps:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if cuda:
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=acts)
            self.prof.start()
            self.prof_t0 = time.perf_counter()

    def write(self) -> None:
        import torch

        cuda = torch.cuda.is_available()
        out = {
            "steps": self.rows[: self.timed_steps] if self.timed_steps else self.rows,
            "profiles": self.profiles,
            "max_memory_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
            "max_memory_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            **self.meta,
        }
        self.path.write_text(json.dumps(out))
