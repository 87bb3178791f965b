"""What a FineTuneJob will cost before it gets a GPU (`kubetune estimate`, `spec.dryRun`).

Torch-free by design, in the API package so that the CLI (kubetune.cli) and the dry-run pod
(kubetune_trainer.dryrun) share it; neither the operator nor the API types import it. Pure
functions in the middle (shapes, memory, steps, time); readers at the edges
(config.json and tokenizer files from the Hub, S3 or a PVC; a sample of the dataset).

Memory model (per GPU, bytes; `peak_memory`):

* weights, from the shapes in config.json: 16-bit (or fp32) for full and adapter methods; for
  QLoRA every decoder Linear in nf4 with double quantization (0.5 + 1/64 bytes a parameter:
  the packed weight and the 8-bit absmax of each 64-block), the rest in 16 bits;
  trainable adapter weights in fp32 (what peft does);
* gradients and optimizer state of the trainable parameters (fp32 AdamW: 4 + 8 bytes; 8-bit
  AdamW 4 + 2; SGD 4); full fine-tuning keeps gradients in the weights' dtype; FSDP divides
  weights, gradients and optimizer state by the world size;
* activations of the largest micro-batch: `tokens x layers x hidden x k` bytes without
  gradient checkpointing, `tokens x (2 x layers x hidden + k_recompute x hidden + c x vocab)`
  with it (each layer keeps its 16-bit input; one layer is recomputed at a time; the loss
  keeps a slice of the logits). The largest micro-batch comes from the sampled row lengths:
  the sum of its rows (padding-free batches, the trainer's default for causal LMs on sm80+
  GPUs) or rows x the longest row (padded batches). The constants `k` are measured, from the
  runs in bench/results (H100, torch 2.11, transformers 5.x, trl 1.16, peft 0.21); the table
  below says which run each comes from, and tests/unit/test_estimate.py checks the estimate
  against every measured peak (within ±20 %; docs/cli.md lists each row's error).

Time: tokens per second from the table measured in docs/benchmarks.md (1B and 8B Llama
shapes, LoRA and QLoRA on one H100), interpolated in the parameter count as a power law per
method; full fine-tuning as LoRA's rate x 2/3 (it also computes the weight gradients: ~6
instead of ~4 FLOPs per parameter and token). Several GPUs scale it by 0.9 x their number.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .estimate_model import (  # noqa: F401 (shapes, memory, throughput; re-exported)
    _LORA_ALIASES,
    C_LOGITS,
    K_NO_CKPT,
    K_NO_CKPT_COMPILE,
    K_NO_CKPT_LIGER,
    K_RECOMPUTE_LORA,
    K_RECOMPUTE_QLORA,
    LIGER_RECOMPUTE,
    THROUGHPUT_H100,
    MemoryEstimate,
    ModelShape,
    _first,
    activation_bytes,
    optimizer_bytes,
    peak_memory,
    peak_micro_batch_tokens,
    shape_from_config,
    tokens_per_second,
    trainable_params,
    weight_bytes,
)
from .s3uri import split_s3_uri
from .v1alpha1 import FineTuneJobSpec, MethodType, PVCPath, pvc_mount_path

GIB = 2**30

# --------------------------------------------------------------------------------------- data


@dataclass
class BadRow:
    line: int  # 1-based line (JSON Lines) or row number
    field: str
    problem: str


@dataclass
class DataSample:
    rows: list[dict[str, Any]]
    line_numbers: list[int]
    malformed: list[tuple[int, str]]  # (line, first characters)
    total_rows: int  # exact when the whole source was read, else extrapolated by bytes
    exact: bool
    source: str


def sample_jsonl(text: str, total_bytes: int | None, source: str, complete: bool) -> DataSample:
    """Rows of JSON Lines text (possibly the first part of a larger file)."""
    lines = text.split("\n")
    if not complete and lines:
        lines = lines[:-1]  # a partial last line
    rows, numbers, bad = [], [], []
    used = 0
    for i, line in enumerate(lines, 1):
        used += len(line.encode()) + 1
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad.append((i, line[:60]))
            continue
        if not isinstance(row, dict):
            bad.append((i, line[:60]))
            continue
        rows.append(row)
        numbers.append(i)
    seen = len(rows) + len(bad)
    exact = complete or not total_bytes or not used
    total = seen if exact else round(seen * (total_bytes or 0) / used)
    return DataSample(rows, numbers, bad, total, complete, source)


def validate_rows(spec: FineTuneJobSpec, sample: DataSample) -> tuple[list[dict], list[BadRow]]:
    from .v1alpha1.rows import RowError, normalize_row

    good, bad = [], [BadRow(n, "(line)", f"not a JSON object: {t!r}") for n, t in sample.malformed]
    for row, line in zip(sample.rows, sample.line_numbers, strict=True):
        try:
            good.append(normalize_row(row, spec.dataset, spec.classification))
        except RowError as e:
            bad.append(BadRow(line, e.field, e.problem))
    bad.sort(key=lambda b: b.line)
    return good, bad


# ---------------------------------------------------------------------------------- tokenizer


class Tokenizer:
    """Token counts with the model's own tokenizer.json (the `tokenizers` library, no torch)
    and its chat template (jinja2, as transformers renders it)."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer as HfTokenizer

        path = directory / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no tokenizer.json (needed to count tokens)")
        self.tok = HfTokenizer.from_file(str(path))
        cfg_path = directory / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        template = cfg.get("chat_template")
        jinja = directory / "chat_template.jinja"
        if template is None and jinja.is_file():
            template = jinja.read_text()
        self.chat_template = template if isinstance(template, str) else None
        self.eos = cfg.get("eos_token") if isinstance(cfg.get("eos_token"), str) else ""
        self.bos = cfg.get("bos_token") if isinstance(cfg.get("bos_token"), str) else ""

    def count(self, text: str) -> int:
        return len(self.tok.encode(text).ids)

    def render_chat(self, messages: list[dict[str, str]]) -> str:
        if not self.chat_template:
            return "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        import jinja2

        env = jinja2.Environment(autoescape=False)
        env.globals["raise_exception"] = _raise
        return env.from_string(self.chat_template).render(
            messages=messages, bos_token=self.bos, eos_token=self.eos, add_generation_prompt=False
        )

    def row_tokens(self, row: dict[str, Any]) -> int:
        if "messages" in row:
            return self.count(self.render_chat(row["messages"]))
        if "prompt" in row:
            return self.count(row["prompt"] + row["completion"]) + 1
        return self.count(row["text"]) + 1


def _raise(message: str) -> None:
    raise ValueError(message)


# ---------------------------------------------------------------------------------- the estimate


@dataclass
class Estimate:
    model: str
    dataset: str
    params: int
    trainable_params: int
    rows_sampled: int
    rows_total: int
    rows_total_exact: bool
    bad_rows: list[BadRow]
    tokens_per_row_mean: float
    tokens_per_row_p95: int
    truncated_rows: int
    train_rows: int
    tokens_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    micro_batch_tokens_peak: int
    padding_free: bool
    memory: MemoryEstimate
    gpus: int
    tokens_per_second: float
    wall_seconds: float
    gpu_hours: float
    notes: list[str] = field(default_factory=list)

    def to_status(self) -> dict[str, Any]:
        """The camelCase dict for status.estimate (small: no rows, at most 20 bad rows)."""
        m = self.memory
        return {
            "params": self.params,
            "trainableParams": self.trainable_params,
            "rowsSampled": self.rows_sampled,
            "rows": self.rows_total,
            "rowsExact": self.rows_total_exact,
            "badRows": [
                {"line": b.line, "field": b.field, "problem": b.problem[:200]}
                for b in self.bad_rows[:20]
            ],
            "badRowCount": len(self.bad_rows),
            "tokensPerRowMean": round(self.tokens_per_row_mean, 1),
            "tokensPerRowP95": self.tokens_per_row_p95,
            "truncatedRows": self.truncated_rows,
            "tokensPerEpoch": self.tokens_per_epoch,
            "stepsPerEpoch": self.steps_per_epoch,
            "totalSteps": self.total_steps,
            "peakMicroBatchTokens": self.micro_batch_tokens_peak,
            "paddingFree": self.padding_free,
            "gpuMemoryGiB": {
                "weights": round(m.weights_gib, 4),
                "optimizer": round(m.optimizer_gib, 4),
                "activations": round(m.activations_gib, 4),
                "peak": round(m.peak_gib, 4),
            },
            "gpus": self.gpus,
            "tokensPerSecond": round(self.tokens_per_second),
            "wallSeconds": round(self.wall_seconds),
            "gpuHours": round(self.gpu_hours, 4),
            "notes": self.notes,
        }

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def padding_free_for(spec: FineTuneJobSpec) -> bool:
    """What speed.plan decides on an sm80+ GPU with varlen kernels (the trainer's default)."""
    return str(spec.task) == "causal-lm" and MethodType(spec.method.type) not in (
        MethodType.PROMPT_TUNING,
        MethodType.PREFIX_TUNING,
    )


def estimate(
    spec: FineTuneJobSpec,
    config: dict[str, Any],
    tokenizer: Tokenizer | None,
    sample: DataSample,
    *,
    model_name: str = "",
    overhead_seconds: float = 120.0,
) -> Estimate:
    """The whole estimate from what the readers fetched (pure but for the tokenizer)."""
    shape = shape_from_config(config)
    good, bad = validate_rows(spec, sample)
    max_len = spec.dataset.max_seq_length or 2048
    notes: list[str] = []
    if tokenizer is not None:
        counts = [tokenizer.row_tokens(r) for r in good]
    else:
        counts = [max(1, len(json.dumps(r)) // 4) for r in good]
        notes.append("no tokenizer.json: token counts are bytes/4")
    truncated = sum(1 for c in counts if c > max_len)
    lengths = [min(c, max_len) for c in counts] or [0]
    mean = sum(lengths) / len(lengths)
    p95 = sorted(lengths)[min(len(lengths) - 1, int(0.95 * len(lengths)))]
    good_fraction = len(good) / max(1, len(good) + len(bad))
    rows = round(sample.total_rows * good_fraction)
    # Rows split off for validation and test (fractions of all rows) do not train.
    held_out = sum(
        part.split_fraction or 0.0
        for part in (spec.dataset.validation, spec.dataset.test)
        if part is not None
    )
    if held_out:
        rows = round(rows * (1 - held_out))
    h = spec.hyperparameters
    gpus = max(1, spec.resources.gpus) * max(1, spec.resources.nodes)
    per_step = h.batch_size * h.gradient_accumulation_steps * gpus
    steps_per_epoch = max(1, math.ceil(rows / per_step)) if rows else 0
    total = h.max_steps if h.max_steps else math.ceil(steps_per_epoch * h.epochs)
    padding_free = padding_free_for(spec)
    micro_batches = max(1, total * h.gradient_accumulation_steps)
    peak_tokens = peak_micro_batch_tokens(
        [c for c in lengths if c], h.batch_size, micro_batches, padding_free=padding_free,
        max_len=max_len,
    )  # fmt: skip
    mem = peak_memory(shape, spec, peak_tokens, world_size=gpus)
    tps = tokens_per_second(shape.params, spec.method.type, gpus)
    train_tokens = total * per_step * mean
    wall = train_tokens / tps + overhead_seconds
    lo, hi = THROUGHPUT_H100["lora"][0][0], THROUGHPUT_H100["lora"][-1][0]
    if not lo / 2 <= shape.params <= hi * 2:
        notes.append(
            f"{shape.params / 1e9:.3g}B parameters is outside the measured 1.2B-8B range: "
            "tokens/s extrapolated"
        )
    if not sample.exact:
        notes.append(f"row count extrapolated from the first {len(sample.rows)} rows by size")
    if spec.resources.gpu_type and "H100" not in spec.resources.gpu_type:
        notes.append("tokens/s measured on an H100; other GPUs differ")
    return Estimate(
        model=model_name,
        dataset=sample.source,
        params=shape.params,
        trainable_params=mem.trainable_params,
        rows_sampled=len(sample.rows) + len(sample.malformed),
        rows_total=sample.total_rows,
        rows_total_exact=sample.exact,
        bad_rows=bad,
        tokens_per_row_mean=mean,
        tokens_per_row_p95=p95,
        truncated_rows=truncated,
        train_rows=rows,
        tokens_per_epoch=round(rows * mean),
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        micro_batch_tokens_peak=peak_tokens,
        padding_free=padding_free,
        memory=mem,
        gpus=gpus,
        tokens_per_second=tps,
        wall_seconds=wall,
        gpu_hours=wall * gpus / 3600,
        notes=notes,
    )


# ------------------------------------------------------------------------- readers (the edges)

MODEL_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
SAMPLE_BYTES = 8 * 2**20  # the first 8 MiB of a dataset file


def pvc_path(ref: PVCPath) -> Path:
    """Where a PVC source is read in the pod (KUBETUNE_PVC_ROOT overrides the root, for tests)."""
    import os

    root = os.environ.get("KUBETUNE_PVC_ROOT", "/mnt/kubetune/pvc")
    return Path(pvc_mount_path(ref.claim_name, root)) / ref.path.lstrip("/")


def _s3_client(endpoint: str | None) -> Any:
    import boto3

    return boto3.client("s3", endpoint_url=endpoint) if endpoint else boto3.client("s3")


def fetch_model_files(spec: FineTuneJobSpec, dest: Path, s3: Any = None) -> Path:
    """config.json and the tokenizer files (never the weights) into dest."""
    src = spec.model
    dest.mkdir(parents=True, exist_ok=True)
    if src.pvc is not None:
        return pvc_path(src.pvc)
    if src.s3_uri:
        bucket, key = split_s3_uri(src.s3_uri.rstrip("/") + "/")
        for name in MODEL_FILES:
            try:
                s3.download_file(bucket, key + name, str(dest / name))
            except Exception as e:
                if name == "config.json":
                    raise FileNotFoundError(
                        f"spec.model.s3Uri: no {src.s3_uri}config.json: {e}"
                    ) from e
        return dest
    from huggingface_hub import hf_hub_download

    for name in MODEL_FILES:
        try:
            hf_hub_download(src.hub_id or "", name, revision=src.revision, local_dir=dest)
        except Exception as e:
            if name == "config.json":
                raise FileNotFoundError(
                    f"spec.model.hubId: {src.hub_id}: no config.json: {e}"
                ) from e
            continue
    return dest


def read_sample(spec: FineTuneJobSpec, s3: Any = None, limit: int = SAMPLE_BYTES) -> DataSample:
    """The first `limit` bytes of the training data (JSON Lines), or all of it if smaller."""
    d = spec.dataset
    if d.inline is not None:
        rows = [dict(r) for r in d.inline]
        return DataSample(rows, list(range(1, len(rows) + 1)), [], len(rows), True, "inline")
    if d.s3_uri:
        bucket, key = split_s3_uri(d.s3_uri)
        if key.endswith("/") or not key:
            listed = s3.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents", [])
            files = sorted(o["Key"] for o in listed if o["Key"].endswith((".jsonl", ".json")))
            if not files:
                raise FileNotFoundError(f"spec.dataset.s3Uri: no .jsonl files under {d.s3_uri}")
            key = files[0]
        size = int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        rng = f"bytes=0-{min(size, limit) - 1}"
        body = s3.get_object(Bucket=bucket, Key=key, Range=rng)["Body"].read()
        text = body.decode("utf-8", errors="replace")
        return sample_jsonl(text, size, f"s3://{bucket}/{key}", complete=size <= limit)
    if d.pvc is not None:
        path = pvc_path(d.pvc)
        if path.is_dir():
            files = sorted(path.glob("*.jsonl"))
            if not files:
                raise FileNotFoundError(f"spec.dataset.pvc: no .jsonl files in {path}")
            path = files[0]
        size = path.stat().st_size
        with path.open("rb") as f:
            text = f.read(limit).decode("utf-8", errors="replace")
        return sample_jsonl(text, size, str(path), complete=size <= limit)
    assert d.hub is not None
    # The Hub's datasets-server converts every dataset to parquet; rows come from there.
    import urllib.parse
    import urllib.request

    q = urllib.parse.urlencode(
        {"dataset": d.hub.name, "config": d.hub.config or "default",
         "split": d.hub.split.split("[")[0], "offset": 0, "length": 100}
    )  # fmt: skip
    with urllib.request.urlopen(f"https://datasets-server.huggingface.co/rows?{q}") as r:
        doc = json.load(r)
    rows = [item["row"] for item in doc.get("rows", [])]
    total = int(doc.get("num_rows_total") or len(rows))
    return DataSample(rows, list(range(1, len(rows) + 1)), [], total, len(rows) == total,
                      f"hub:{d.hub.name}")  # fmt: skip


def estimate_job(
    spec: FineTuneJobSpec, work_dir: Path, *, s3_endpoint: str | None = None, s3: Any = None
) -> Estimate:
    """Fetch config.json, tokenizer files and a data sample, then estimate (no weights, no GPU)."""
    needs_s3 = bool(spec.model.s3_uri or spec.dataset.s3_uri)
    if s3 is None and needs_s3:
        s3 = _s3_client(s3_endpoint)
    model_dir = fetch_model_files(spec, work_dir / "model", s3)
    config = json.loads((model_dir / "config.json").read_text())
    try:
        tokenizer: Tokenizer | None = Tokenizer(model_dir)
    except FileNotFoundError:
        tokenizer = None
    sample = read_sample(spec, s3)
    return estimate(spec, config, tokenizer, sample, model_name=spec.model.display())
