"""Stage `build`: make the loaded model trainable by the chosen method.

`IMPLEMENTATIONS` is the torch-side half of the method registry (the facts are
`kubetune_api.v1alpha1.METHODS`): per method type, the model preparation (freezing the 4-bit
base for qlora, freezeLayers for full, biases only for bitfit) and the PEFT config builder
(pure functions from the spec, unit-tested). `apply` runs them: prepare, then `get_peft_model`
for adapter methods (with fp32 trainable weights).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from kubetune_api.v1alpha1 import (
    METHODS,
    ConfigError,
    MethodSpec,
    MethodType,
    TaskType,
)

log = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "bert": ["query", "key", "value", "dense"],
}
HEAD_MODULES = ("classifier", "score")


def peft_task_type(task: str) -> str:
    return "SEQ_CLS" if TaskType(task) == TaskType.SEQUENCE_CLASSIFICATION else "CAUSAL_LM"


def lora_targets(targets: list[str] | None, fam: str) -> list[str] | str:
    """Target modules: the spec's, else the family default, else every linear layer."""
    if targets:
        return "all-linear" if targets == ["all-linear"] else list(targets)
    return list(DEFAULT_LORA_TARGETS.get(fam, [])) or "all-linear"


@dataclass(frozen=True)
class PeftTarget:
    """What a PEFT config builder may read besides the method spec."""

    task: str
    family: str  # modelload.family: llama, bert or other
    model_type: str  # the model config's model_type
    model_path: str


PeftBuilder = Callable[[MethodSpec, PeftTarget], tuple[str, dict[str, Any]]]
Preparation = Callable[[Any, MethodSpec, str], None]


def _lora_config(m: MethodSpec, target: PeftTarget) -> tuple[str, dict[str, Any]]:
    assert m.lora is not None
    kw: dict[str, Any] = {
        "task_type": peft_task_type(target.task),
        "r": m.lora.r,
        "lora_alpha": m.lora.alpha,
        "lora_dropout": m.lora.dropout,
        "target_modules": lora_targets(m.lora.target_modules, target.family),
        "bias": str(m.lora.bias),
        "use_rslora": m.lora.use_rslora,
        "use_dora": MethodType(m.type) == MethodType.DORA,
    }
    if m.lora.modules_to_save:
        kw["modules_to_save"] = list(m.lora.modules_to_save)
    return "LoraConfig", kw


def _prompt_tuning_config(m: MethodSpec, target: PeftTarget) -> tuple[str, dict[str, Any]]:
    assert m.prompt_tuning is not None
    kw: dict[str, Any] = {
        "task_type": peft_task_type(target.task),
        "num_virtual_tokens": m.prompt_tuning.num_virtual_tokens,
    }
    if m.prompt_tuning.init_text:
        kw.update(
            prompt_tuning_init="TEXT",
            prompt_tuning_init_text=m.prompt_tuning.init_text,
            tokenizer_name_or_path=target.model_path,
        )
    return "PromptTuningConfig", kw


def _prefix_tuning_config(m: MethodSpec, target: PeftTarget) -> tuple[str, dict[str, Any]]:
    assert m.prefix_tuning is not None
    return "PrefixTuningConfig", {
        "task_type": peft_task_type(target.task),
        "num_virtual_tokens": m.prefix_tuning.num_virtual_tokens,
    }


def _ia3_config(m: MethodSpec, target: PeftTarget) -> tuple[str, dict[str, Any]]:
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF,
    )
    from peft.utils.constants import (
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as TARGETS,
    )

    assert m.ia3 is not None
    model_type = target.model_type
    targets = m.ia3.target_modules or TARGETS.get(model_type)
    if not targets:
        raise ConfigError(
            f"method ia3: no default target modules for model type {model_type!r}; set "
            "method.ia3.targetModules and feedforwardModules"
        )
    ff = m.ia3.feedforward_modules
    if ff is None:
        ff = [x for x in FF.get(model_type, []) if x in targets] if not m.ia3.target_modules else []
    return "IA3Config", {
        "task_type": peft_task_type(target.task),
        "target_modules": list(targets),
        "feedforward_modules": list(ff),
    }


def peft_config_kwargs(
    method: MethodSpec, task: str, fam: str, model_type: str, model_path: str
) -> tuple[str, dict[str, Any]]:
    """(peft config class name, kwargs) for adapter methods."""
    m = method.resolved()
    t = MethodType(m.type)
    builder = IMPLEMENTATIONS[t].peft_config
    if builder is None:
        raise ValueError(f"{t} is not an adapter method")
    return builder(m, PeftTarget(task, fam, model_type, model_path))


def build_peft_config(
    method: MethodSpec, task: str, fam: str, model_type: str, model_path: str
) -> Any:
    import peft

    name, kwargs = peft_config_kwargs(method, task, fam, model_type, model_path)
    return getattr(peft, name)(**kwargs)


def count_parameters(model: Any) -> tuple[int, int]:
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        # 4-bit params pack two values per byte
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def _decoder_layers(model: Any) -> Any:
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    return None


def freeze_layers(model: Any, n: int) -> None:
    """Freeze everything below the lowest `n` transformer layers' top: the whole embedding stage
    (word, position and token-type embeddings, and the embedding LayerNorm of BERT-like and
    BLOOM models, not only `get_input_embeddings()`) and layers 0..n-1.

    "The embedding stage" is every parameter registered before the first layer's: models
    register their modules in forward order, so this covers each family without a name list."""
    layers = _decoder_layers(model)
    if layers is None:
        raise ConfigError("method.freezeLayers: cannot find the model's layer list")
    if n > len(layers):
        raise ConfigError(f"method.freezeLayers {n}: the model has only {len(layers)} layers")
    first = {id(p) for p in layers[0].parameters()}
    for p in model.parameters():
        if id(p) in first:
            break
        p.requires_grad_(False)
    for p in model.get_input_embeddings().parameters():
        p.requires_grad_(False)
    for layer in layers[:n]:
        for p in layer.parameters():
            p.requires_grad_(False)


def bitfit(model: Any, task: str) -> None:
    """Train biases only (plus a freshly initialised classification head)."""
    is_cls = TaskType(task) == TaskType.SEQUENCE_CLASSIFICATION
    n_bias = 0
    for name, p in model.named_parameters():
        train = name.endswith(".bias") or (is_cls and name.split(".")[0] in HEAD_MODULES)
        p.requires_grad_(train)
        n_bias += name.endswith(".bias")
    if n_bias == 0:
        raise ConfigError(
            f"method bitfit: {type(model).__name__} has no bias parameters (Llama-like models "
            "have none); use lora or ia3"
        )


def freeze_base(model: Any) -> None:
    """k-bit preparation for qlora: freeze the quantized base and nothing more.

    peft's `prepare_model_for_kbit_training` (the seed recipe's) also casts every parameter that
    is not 4-bit to float32: the embeddings and the LM head, 2 x 525M parameters on a Llama-3-8B,
    i.e. +2 GiB of GPU memory for frozen weights that autocast turns back into bf16 for every
    matmul, and fp32 hidden states after the upcast norms. trl's SFTTrainer does none of that
    for quantized models, and the QLoRA benchmark (docs/benchmarks.md) measured trl's way. The
    trainable weights get their fp32 copy from `upcast_trainable`; gradient checkpointing is
    enabled by the Trainer (non-reentrant, so the inputs need no `requires_grad` hook)."""
    for p in model.parameters():
        p.requires_grad_(False)


def upcast_trainable(model: Any) -> int:
    """Make every trainable 16-bit parameter float32: optimizer updates on 16-bit weights lose
    most small steps to rounding. peft already keeps LoRA A/B in fp32 (`autocast_adapter_dtype`);
    this covers `modulesToSave` copies (a classifier, an LM head) of a 16-bit base, which peft
    clones in the base's dtype. Autocast still runs their matmuls in 16 bits. Returns the number
    of parameters cast."""
    import torch

    n = 0
    for p in model.parameters():
        if p.requires_grad and p.dtype in (torch.float16, torch.bfloat16):
            p.data = p.data.float()
            n += 1
    return n


def keep_cpu_4bit_trainable(model: Any) -> int:
    """bitsandbytes (0.50) repacks 4-bit weights for its CPU inference kernel on the first
    eval-mode forward on CPUs with AVX512-BF16, and never unpacks them for training: later
    training steps then run through `gemv_4bit`, which has no autograd kernel, and the
    adapters get wrong gradients (measured: 80% relative error, some none at all). Evaluation
    happens before and during training, so turn the repacking off on every 4-bit layer.
    Returns the number of layers changed."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and getattr(
            module, "support_avx512bf16_for_cpu", False
        ):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


_PEFT_TYPES = {
    MethodType.LORA: "LORA",
    MethodType.QLORA: "LORA",
    MethodType.DORA: "LORA",
    MethodType.PROMPT_TUNING: "PROMPT_TUNING",
    MethodType.PREFIX_TUNING: "PREFIX_TUNING",
    MethodType.IA3: "IA3",
}


def continue_adapter(model: Any, adapter_dir: Any, t: MethodType) -> Any:
    """Load an earlier run's adapter onto `model`, trainable (a warm start)."""
    import json
    from pathlib import Path

    from peft import PeftModel

    saved = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    peft_type = str(saved.get("peft_type", ""))
    if peft_type != _PEFT_TYPES[t] or bool(saved.get("use_dora")) != (t == MethodType.DORA):
        raise ConfigError(
            f"spec.method.type: the base job's adapter is {peft_type}"
            f"{' (DoRA)' if saved.get('use_dora') else ''}, which method {t.value} cannot "
            "continue: set method.type to the base job's method"
        )
    log.info("warm start: continuing the adapter in %s", adapter_dir)
    return PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)


def _prepare_4bit(model: Any, method: MethodSpec, task: str) -> None:
    keep_cpu_4bit_trainable(model)
    freeze_base(model)


def _prepare_full(model: Any, method: MethodSpec, task: str) -> None:
    if method.freeze_layers:
        freeze_layers(model, method.freeze_layers)


def _prepare_bitfit(model: Any, method: MethodSpec, task: str) -> None:
    bitfit(model, task)


@dataclass(frozen=True)
class MethodImplementation:
    """The torch-side part of a method's record (the facts are in kubetune_api's METHODS):
    `prepare` runs on the loaded model first, then `peft_config` (adapter methods only) wraps
    it with get_peft_model."""

    prepare: Preparation | None = None
    peft_config: PeftBuilder | None = None


IMPLEMENTATIONS: Mapping[MethodType, MethodImplementation] = MappingProxyType(
    {
        MethodType.FULL: MethodImplementation(prepare=_prepare_full),
        MethodType.LORA: MethodImplementation(peft_config=_lora_config),
        MethodType.QLORA: MethodImplementation(prepare=_prepare_4bit, peft_config=_lora_config),
        MethodType.DORA: MethodImplementation(peft_config=_lora_config),
        MethodType.PROMPT_TUNING: MethodImplementation(peft_config=_prompt_tuning_config),
        MethodType.PREFIX_TUNING: MethodImplementation(peft_config=_prefix_tuning_config),
        MethodType.IA3: MethodImplementation(peft_config=_ia3_config),
        MethodType.BITFIT: MethodImplementation(prepare=_prepare_bitfit),
    }
)


def apply(
    loaded: Any,
    method: MethodSpec,
    task: str,
    model_path: str,
    warm_start: Any = None,
) -> Any:
    """The trainable model for `method` (a PeftModel for adapter methods). `warm_start`: the
    directory of an earlier run's adapter to keep training (spec.model.fromJob, artifact
    adapter) instead of a fresh one."""
    model = loaded.model
    t = MethodType(method.type)
    impl = IMPLEMENTATIONS[t]
    if impl.prepare is not None:
        impl.prepare(model, method, task)
    if METHODS[t].adapter:
        from peft import get_peft_model

        if warm_start is not None:
            model = continue_adapter(model, warm_start, t)
        else:
            cfg = build_peft_config(method, task, loaded.family, loaded.model_type, model_path)
            try:
                model = get_peft_model(model, cfg)
            except ValueError as e:
                raise ConfigError(f"method {t.value}: {e}") from e
        upcast_trainable(model)
        if t == MethodType.PREFIX_TUNING:
            from .prefixgen import fix_prefix_generation

            fix_prefix_generation(model)  # generate() ignores the prefix otherwise (prefixgen.py)
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise ConfigError(f"method {t.value}: no trainable parameters")
    log.info(
        "method %s: %s trainable of %s parameters (%.2f%%)",
        t.value,
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / max(total, 1),
    )
    return model
