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
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .v1alpha1 import FineTuneJobSpec, MethodType, Precision, PVCPath, pvc_mount_path

GIB = 2**30

# -------------------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ModelShape:
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    gated_mlp: bool
    max_positions: int = 0

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, in, out) of one decoder layer's Linear modules."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, 0
        i = self.intermediate
        out = [("q", h, q), ("k", h, kv), ("v", h, kv), ("o", q, h)]
        if self.gated_mlp:
            out += [("gate", h, i), ("up", h, i), ("down", i, h)]
        else:
            out += [("up", h, i), ("down", i, h)]
        return out

    @property
    def linear_params(self) -> int:
        return self.layers * sum(a * b for _, a, b in self.linears())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2) + self.max_positions * self.hidden

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.linear_params + self.embedding_params + norms


def _first(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def shape_from_config(cfg: dict[str, Any]) -> ModelShape:
    """A ModelShape from a transformers config.json (Llama/Mistral/Qwen-like, GPT-2, BERT)."""
    cfg = cfg.get("text_config") or cfg  # multimodal wrappers keep the LM under text_config
    hidden = _first(cfg, "hidden_size", "n_embd", "d_model")
    layers = _first(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(cfg, "num_attention_heads", "n_head")
    vocab = _first(cfg, "vocab_size")
    missing = [
        n
        for n, v in (
            ("hidden_size", hidden),
            ("num_hidden_layers", layers),
            ("num_attention_heads", heads),
            ("vocab_size", vocab),
        )
        if v is None
    ]
    if missing:
        raise ValueError(f"config.json: no {', '.join(missing)} (not a transformer config?)")
    model_type = str(cfg.get("model_type") or "")
    gated = model_type not in {"bert", "roberta", "distilbert", "gpt2", "gpt_neox", "opt"}
    head_dim = int(_first(cfg, "head_dim", default=0) or hidden // heads)
    inter = int(_first(cfg, "intermediate_size", "n_inner", "ffn_dim", default=0) or 4 * hidden)
    learned_positions = model_type in {"bert", "roberta", "distilbert", "gpt2", "opt"}
    return ModelShape(
        model_type=model_type,
        hidden=int(hidden),
        layers=int(layers),
        heads=int(heads),
        kv_heads=int(_first(cfg, "num_key_value_heads", default=heads)),
        head_dim=head_dim,
        intermediate=inter,
        vocab=int(vocab),
        tied=bool(cfg.get("tie_word_embeddings", not gated)),
        gated_mlp=gated,
        max_positions=int(_first(cfg, "max_position_embeddings", "n_positions", default=0))
        if learned_positions
        else 0,
    )


_LORA_ALIASES = {
    "q": {"q_proj", "query", "q", "c_attn"},
    "k": {"k_proj", "key", "k", "c_attn"},
    "v": {"v_proj", "value", "v", "c_attn"},
    "o": {"o_proj", "dense", "out_proj", "c_proj"},
    "gate": {"gate_proj", "w1"},
    "up": {"up_proj", "dense", "fc1", "c_fc", "w3"},
    "down": {"down_proj", "dense", "fc2", "c_proj", "w2"},
}


def trainable_params(shape: ModelShape, spec: FineTuneJobSpec) -> int:
    m = spec.method
    kind = MethodType(m.type)
    if kind == MethodType.FULL:
        layers_frozen = m.freeze_layers or 0
        per_layer = shape.linear_params // max(1, shape.layers)
        return shape.params - layers_frozen * per_layer
    if kind in (MethodType.LORA, MethodType.QLORA, MethodType.DORA):
        r = m.lora.r if m.lora else 16
        targets = m.lora.target_modules if m.lora else None
        chosen = [
            (n, a, b)
            for n, a, b in shape.linears()
            if not targets or targets == ["all-linear"] or _LORA_ALIASES[n] & set(targets)
        ]
        n = shape.layers * sum(r * (a + b) for _, a, b in chosen)
        if kind == MethodType.DORA:
            n += shape.layers * sum(b for _, _, b in chosen)  # magnitude vectors
        return n
    if kind == MethodType.PROMPT_TUNING:
        tokens = m.prompt_tuning.num_virtual_tokens if m.prompt_tuning else 20
        return tokens * shape.hidden
    if kind == MethodType.PREFIX_TUNING:
        tokens = m.prefix_tuning.num_virtual_tokens if m.prefix_tuning else 20
        return 2 * tokens * shape.layers * shape.kv_heads * shape.head_dim
    if kind == MethodType.IA3:
        return shape.layers * (2 * shape.kv_heads * shape.head_dim + shape.intermediate)
    return shape.layers * sum(b for _, _, b in shape.linears())  # bitfit: the biases


# -------------------------------------------------------------------------------------- memory

# Activation constants (bytes per token, per layer, per unit of hidden size), measured on the
# bench runs named on each line (bench/results/h100-*.json, case "variant").
K_NO_CKPT = 70.0  # 1B LoRA "ours-no-liger" (varlen, padding-free); 8B LoRA agrees within 3 %
K_NO_CKPT_LIGER = 60.0  # 1B LoRA "ours", "ours-mb8x2"; 8B LoRA "ours"
K_NO_CKPT_COMPILE = 51.0  # 1B LoRA "ours-compile" (trl torch_compile)
K_RECOMPUTE_LORA = 100.0  # 1B and 8B LoRA "baseline" (checkpointing, sdpa, padded)
K_RECOMPUTE_QLORA = 66.0  # 1B and 8B QLoRA "baseline"
LIGER_RECOMPUTE = 0.67  # 1B, 8B QLoRA "ours" and 8B "ours-mb4x4" against their baselines
C_LOGITS = 0.42  # bytes per token per vocabulary entry the loss keeps (all checkpointed rows)


@dataclass
class MemoryEstimate:
    weights_gib: float
    optimizer_gib: float
    activations_gib: float
    peak_gib: float
    trainable_params: int
    params: int
    micro_batch_tokens: int


def weight_bytes(shape: ModelShape, spec: FineTuneJobSpec, trainable: int) -> float:
    kind = MethodType(spec.method.type)
    wb = 4 if spec.hyperparameters.precision == Precision.FP32 else 2
    if kind == MethodType.QLORA:
        rest = shape.params - shape.linear_params
        return shape.linear_params * (0.5 + 1 / 64) + rest * 2 + trainable * 4
    if kind == MethodType.FULL:
        return shape.params * wb
    return shape.params * wb + trainable * 4


def optimizer_bytes(spec: FineTuneJobSpec, trainable: int) -> float:
    opt = str(spec.hyperparameters.optimizer)
    state = 0.0 if opt == "sgd" else 2.0 if "8bit" in opt else 1.0 if opt == "adafactor" else 8.0
    kind = MethodType(spec.method.type)
    grad = 2.0 if kind == MethodType.FULL and spec.hyperparameters.precision != "fp32" else 4.0
    return trainable * (grad + state)


def activation_bytes(
    shape: ModelShape,
    spec: FineTuneJobSpec,
    tokens: int,
    *,
    liger: bool = False,
    compile: bool = False,
) -> float:
    h, layers = shape.hidden, shape.layers
    scale = 2.0 if spec.hyperparameters.precision == Precision.FP32 else 1.0
    if not spec.hyperparameters.gradient_checkpointing:
        k = K_NO_CKPT_COMPILE if compile else K_NO_CKPT_LIGER if liger else K_NO_CKPT
        return tokens * layers * h * k * scale
    k = K_RECOMPUTE_QLORA if MethodType(spec.method.type) == MethodType.QLORA else K_RECOMPUTE_LORA
    if liger:
        k *= LIGER_RECOMPUTE
    return tokens * (2 * layers * h + k * h + C_LOGITS * shape.vocab) * scale


def peak_micro_batch_tokens(
    lengths: list[int],
    micro_batch: int,
    micro_batches: int,
    *,
    padding_free: bool,
    max_len: int,
    seed: int = 0,
) -> int:
    """The largest micro-batch (tokens, padding included) expected over the run: the mean,
    over a few simulated runs, of the largest of `micro_batches` random micro-batches drawn
    from the sampled row lengths."""
    if not lengths:
        return 0
    rng = random.Random(seed)
    ls = [min(max_len, n) for n in lengths]
    draws = min(micro_batches, 2000)
    trials = 8
    total = 0
    for _ in range(trials):
        most = 0
        for _ in range(draws):
            rows = [ls[rng.randrange(len(ls))] for _ in range(micro_batch)]
            most = max(most, sum(rows) if padding_free else micro_batch * max(rows))
        total += most
    return round(total / trials)


def peak_memory(
    shape: ModelShape,
    spec: FineTuneJobSpec,
    micro_batch_tokens: int,
    *,
    world_size: int = 1,
    liger: bool = False,
    compile: bool = False,
) -> MemoryEstimate:
    trainable = trainable_params(shape, spec)
    weights = weight_bytes(shape, spec, trainable)
    opt = optimizer_bytes(spec, trainable)
    if str(spec.resources.distribution.strategy) == "fsdp" and world_size > 1:
        weights /= world_size
        opt /= world_size
    act = activation_bytes(shape, spec, micro_batch_tokens, liger=liger, compile=compile)
    return MemoryEstimate(
        weights_gib=weights / GIB,
        optimizer_gib=opt / GIB,
        activations_gib=act / GIB,
        peak_gib=(weights + opt + act) / GIB,
        trainable_params=trainable,
        params=shape.params,
        micro_batch_tokens=micro_batch_tokens,
    )


# ---------------------------------------------------------------------------------- throughput

# Tokens per second on one H100 80GB (docs/benchmarks.md, "Results", the trainer's defaults:
# varlen attention, padding-free; "ours" rows). Keys: method -> [(parameters, tokens/s)].
THROUGHPUT_H100: dict[str, list[tuple[float, float]]] = {
    "lora": [(1.236e9, 26776.0), (8.03e9, 6538.0)],  # 1B "without Liger"; 8B "ours"
    "qlora": [(1.236e9, 14335.0), (8.03e9, 6918.0)],  # 1B and 8B "ours"
}


def tokens_per_second(params: int, method: str, gpus: int = 1) -> float:
    kind = MethodType(method)
    key = "qlora" if kind == MethodType.QLORA else "lora"
    (p1, t1), (p2, t2) = THROUGHPUT_H100[key]
    b = math.log(t2 / t1) / math.log(p2 / p1)
    # outside the measured range the power law is an extrapolation: no faster than 4x the
    # smallest model's rate (tiny models are bound by per-step overheads, not FLOPs)
    tps = min(t1 * (params / p1) ** b, 4 * t1)
    if kind == MethodType.FULL:
        tps *= 2 / 3
    return tps * (gpus if gpus <= 1 else 0.9 * gpus)


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
    val = spec.dataset.validation
    if val is not None and val.split_fraction:
        rows = round(rows * (1 - val.split_fraction))
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


def _split(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def fetch_model_files(spec: FineTuneJobSpec, dest: Path, s3: Any = None) -> Path:
    """config.json and the tokenizer files (never the weights) into dest."""
    src = spec.model
    dest.mkdir(parents=True, exist_ok=True)
    if src.pvc is not None:
        return pvc_path(src.pvc)
    if src.s3_uri:
        bucket, key = _split(src.s3_uri.rstrip("/") + "/")
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
        bucket, key = _split(d.s3_uri)
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
