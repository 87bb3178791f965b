"""Stage `load`: tokenizer and base model from a resolved local directory.

Decides the load dtype and quantization (pure helpers, unit-tested), loads with transformers,
and turns loader failures into ModelError (exit 12) with the cause. For classification the
label names go into the model config (id2label/label2id), so every saved model carries them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_api.v1alpha1 import (
    ClassificationSpec,
    ConfigError,
    DataFormat,
    DatasetSpec,
    LoadDtype,
    MethodSpec,
    ModelError,
    Precision,
    QuantizationSpec,
    TaskType,
    method_record,
)

log = logging.getLogger(__name__)

LLAMA_LIKE = {
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "gemma", "gemma2",
    "gemma3_text", "phi3", "olmo", "olmo2", "granite", "starcoder2", "cohere", "smollm3",
}  # fmt: skip
BERT_LIKE = {"bert", "roberta", "xlm-roberta", "electra", "camembert", "ernie", "modernbert"}
HEAD_PREFIXES = ("classifier", "score", "pooler", "lm_head", "qa_outputs")


def family(model_type: str | None) -> str:
    """Architecture family for defaults: llama (decoder with *_proj), bert (encoder), other."""
    if model_type in LLAMA_LIKE:
        return "llama"
    if model_type in BERT_LIKE:
        return "bert"
    return "other"


def resolve_precision(precision: str, cuda: bool, bf16_supported: bool) -> str:
    """bf16 | fp16 | fp32 for training. auto: bf16 where the GPU supports it, else fp16 on GPU,
    fp32 on CPU."""
    p = Precision(precision)
    if p == Precision.AUTO:
        if not cuda:
            return "fp32"
        return "bf16" if bf16_supported else "fp16"
    if p == Precision.FP16 and not cuda:
        raise ConfigError(
            "hyperparameters.precision fp16 needs a GPU (this pod has none); use auto"
        )
    if p == Precision.BF16 and cuda and not bf16_supported:
        raise ConfigError("hyperparameters.precision bf16: this GPU does not support bfloat16")
    return p.value


def load_dtype_name(method: MethodSpec, precision: str, cuda: bool) -> str:
    """Dtype the base weights are loaded in. Adapter methods keep the frozen base in the
    16-bit training precision on GPU (trainable adapter weights stay fp32); full and bitfit
    keep fp32 master weights (mixed precision via autocast); CPU is fp32."""
    if not cuda:
        return "float32"
    training_precision = method_record(method.type).load_dtype == LoadDtype.TRAINING_PRECISION
    if training_precision and precision in ("bf16", "fp16"):
        return "bfloat16" if precision == "bf16" else "float16"
    return "float32"


def bnb_kwargs(q: QuantizationSpec) -> dict[str, Any]:
    """BitsAndBytesConfig arguments for qlora's 4-bit base."""
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": str(q.quant_type),
        "bnb_4bit_use_double_quant": q.double_quant,
        "bnb_4bit_compute_dtype": str(q.compute_dtype),
    }


def label_maps(cls: ClassificationSpec) -> tuple[dict[int, str], dict[str, int]]:
    names = cls.label_names or [str(i) for i in range(cls.count)]
    return dict(enumerate(names)), {n: i for i, n in enumerate(names)}


def read_model_type(path: Path) -> str | None:
    """config.json's model_type, without loading anything."""
    import json

    try:
        return str(json.loads((path / "config.json").read_text()).get("model_type") or "") or None
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------ tokenizer


@contextlib.contextmanager
def _model_error(source: str, what: str) -> Iterator[None]:
    """Any failure inside, as a ModelError naming the model and what could not be done
    (transformers raises many kinds for a broken or foreign checkpoint)."""
    try:
        yield
    except Exception as e:
        raise ModelError(f"model {source}: {what} ({type(e).__name__}: {e})") from e


def load_tokenizer(path: Path, dataset: DatasetSpec, trust_remote_code: bool, source: str) -> Any:
    from transformers import AutoTokenizer

    with _model_error(source, "cannot load the tokenizer"):
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        fallback = tok.eos_token or tok.unk_token
        if fallback is None:
            raise ModelError(
                f"model {source}: the tokenizer has no pad, eos or unk token to pad with"
            )
        tok.pad_token = fallback
        log.info("tokenizer has no pad token; padding with %r", fallback)
    if dataset.chat_template:
        tok.chat_template = dataset.chat_template
    if DataFormat(dataset.format) == DataFormat.MESSAGES:
        check_chat_template(tok, dataset)
    return tok


def check_chat_template(tok: Any, dataset: DatasetSpec) -> None:
    """messages needs a chat template; assistant-only loss needs one whose assistant turns sit
    in {% generation %} markers (trl builds the loss mask from them). trl knows marked-up
    versions of common templates (Llama 3, Qwen, Gemma, Phi...); for others say what to do."""
    if not getattr(tok, "chat_template", None):
        raise ConfigError(
            "dataset.format messages: the tokenizer has no chat template; set "
            "dataset.chatTemplate (a Jinja template) or use format prompt-completion"
        )
    if not dataset.assistant_only_loss:
        return
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    if has_generation_markers(tok.chat_template):
        return
    try:
        patched = get_training_chat_template(tok)
    except ValueError as e:
        raise ConfigError(
            "dataset.assistantOnlyLoss needs a chat template that marks assistant turns with "
            "{% generation %}...{% endgeneration %}; the tokenizer's template has no such "
            "markers and trl has no marked-up version of it. Set dataset.chatTemplate to a "
            "template with the markers around each assistant message (and its end-of-turn "
            "token), or set dataset.assistantOnlyLoss: false to train on whole conversations"
        ) from e
    log.info(
        "chat template has no {%% generation %%} markers; trl's training variant is used (%s)",
        "known template" if patched else "no change",
    )


# ------------------------------------------------------------------------------------ model


class _DropLoadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    model_type: str
    family: str
    dtype: str
    quantized: bool


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def model_class(task: str) -> Any:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return (
        AutoModelForSequenceClassification
        if TaskType(task) == TaskType.SEQUENCE_CLASSIFICATION
        else AutoModelForCausalLM
    )


def load_model(
    path: Path,
    *,
    task: str,
    method: MethodSpec,
    classification: ClassificationSpec | None,
    dtype: str,
    trust_remote_code: bool,
    tokenizer: Any,
    source: str,
    device_index: int | None,
    attn_implementation: str | None = None,
    quant_storage: str | None = None,
) -> LoadedModel:
    import torch
    from transformers import AutoConfig

    with _model_error(source, "cannot read config.json"):
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    model_type = str(getattr(config, "model_type", "") or "")
    kwargs: dict[str, Any] = {
        "trust_remote_code": trust_remote_code,
        "dtype": _torch_dtype(dtype),
        "output_loading_info": True,
    }
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    is_cls = TaskType(task) == TaskType.SEQUENCE_CLASSIFICATION
    if is_cls:
        assert classification is not None
        id2label, label2id = label_maps(classification)
        kwargs.update(
            num_labels=classification.count,
            id2label=id2label,
            label2id=label2id,
            problem_type="single_label_classification",
        )
    quantized = method_record(method.type).quantized_base
    if quantized:
        from transformers import BitsAndBytesConfig

        q = method.resolved().quantization
        assert q is not None
        bnb = bnb_kwargs(q)
        if quant_storage:
            bnb["bnb_4bit_quant_storage"] = _torch_dtype(quant_storage)
        kwargs["quantization_config"] = BitsAndBytesConfig(**bnb)
        kwargs["dtype"] = _torch_dtype(str(q.compute_dtype))
        kwargs["device_map"] = {"": device_index if device_index is not None else "cpu"}
        if not torch.cuda.is_available():
            log.info("qlora without a GPU: bitsandbytes runs the 4-bit layers on CPU (slow)")
    # transformers prints a multi-line load report for the expected missing head; the checks
    # below decide what is expected and say it in one line.
    # (A filter, not a level: transformers runs extra checks when that logger's level is set.)
    report_logger = logging.getLogger("transformers.modeling_utils")
    report_filter = _DropLoadReport()
    report_logger.addFilter(report_filter)
    try:
        model, info = model_class(task).from_pretrained(str(path), **kwargs)
    except ValueError as e:
        raise ModelError(f"model {source}: cannot load ({e})") from e
    except (OSError, KeyError, RuntimeError, TypeError, ImportError) as e:
        raise ModelError(f"model {source}: cannot load ({type(e).__name__}: {e})") from e
    finally:
        report_logger.removeFilter(report_filter)
    heads = sorted(
        k for k in info.get("missing_keys", ()) if is_cls and k.startswith(HEAD_PREFIXES)
    )
    if heads:
        log.info("new classification head (trained from scratch): %s", ", ".join(heads))
    missing = sorted(
        k for k in info.get("missing_keys", ()) if not k.startswith(HEAD_PREFIXES) or not is_cls
    )
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k.startswith("lm_head"))]
    if missing:
        raise ModelError(
            f"model {source}: the weights do not match the {model_type} architecture: "
            f"{len(missing)} parameters missing (e.g. {', '.join(missing[:3])})"
        )
    if info.get("mismatched_keys"):
        raise ModelError(
            f"model {source}: weights with the wrong shape: "
            f"{', '.join(str(k) for k in list(info['mismatched_keys'])[:3])}"
        )
    if is_cls and getattr(model.config, "pad_token_id", None) is None:
        # Decoder classifiers pick the last non-pad token; they need to know the pad id.
        model.config.pad_token_id = tokenizer.pad_token_id
    log.info(
        "loaded %s (%s, %s, %.1fM parameters%s)",
        source,
        type(model).__name__,
        dtype,
        sum(p.numel() for p in model.parameters()) / 1e6,
        ", 4-bit" if quantized else "",
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_type=model_type,
        family=family(model_type),
        dtype=dtype,
        quantized=quantized,
    )
