"""`spec.method`: the fine-tuning method (full, LoRA, QLoRA, DoRA, IA3, prompt/prefix tuning)
and its settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
)

from ._base import Spec, WireBool, WireFloat, WireInt, cel, validations

# ---------------------------------------------------------------------------------------------
# Method
# ---------------------------------------------------------------------------------------------


class MethodType(StrEnum):
    FULL = "full"
    LORA = "lora"
    QLORA = "qlora"
    DORA = "dora"
    PROMPT_TUNING = "prompt-tuning"
    PREFIX_TUNING = "prefix-tuning"
    IA3 = "ia3"
    BITFIT = "bitfit"


class LoadDtype(StrEnum):
    """The dtype a method loads the base weights in on a GPU (on CPU everything is float32)."""

    TRAINING_PRECISION = "training-precision"  # the frozen base in the 16-bit training precision
    FLOAT32 = "float32"  # fp32 master weights; autocast gives the mixed precision


@dataclass(frozen=True)
class MethodRecord:
    """What the rest of kubetune needs to know about one method type, in one place. The
    torch-side parts (PEFT config builder, model preparation) are keyed by the same type in
    `kubetune_trainer.methods.IMPLEMENTATIONS`."""

    type: MethodType
    # Trains a PEFT adapter, saved on its own (artifacts/adapter); else the trained model itself
    # is the artifact (artifacts/merged).
    adapter: bool
    # The adapter folds into the base weights (merge_and_unload) for output.mergedModel.
    mergeable: bool
    # The optimizer covers every weight: FSDP by default on several GPUs, no use_orig_params.
    trains_all_weights: bool
    # The PEFT wrapper prepends virtual tokens (or past key/values): padded attention masks only,
    # no FSDP (the prompt encoder lives outside the wrapped layers), nothing to merge.
    virtual_tokens: bool
    # The frozen base is loaded 4-bit (bitsandbytes) with spec.method.quantization.
    quantized_base: bool
    load_dtype: LoadDtype
    # The MethodSpec fields that carry this type's settings (their defaults filled by resolved()).
    settings: tuple[str, ...] = ()
    # A CUDA OOM message may suggest qlora's 4-bit base instead.
    oom_suggests_qlora: bool = False


def _adapter(t: MethodType, *settings: str, mergeable: bool = True, **kw: Any) -> MethodRecord:
    return MethodRecord(
        type=t,
        adapter=True,
        mergeable=mergeable,
        trains_all_weights=False,
        virtual_tokens=kw.pop("virtual_tokens", False),
        quantized_base=kw.pop("quantized_base", False),
        load_dtype=LoadDtype.TRAINING_PRECISION,
        settings=settings,
        **kw,
    )


def _no_adapter(t: MethodType, *, trains_all_weights: bool, **kw: Any) -> MethodRecord:
    """A method whose artifact is the trained model itself, trained in fp32 master weights."""
    return MethodRecord(
        type=t,
        adapter=False,
        mergeable=False,
        trains_all_weights=trains_all_weights,
        virtual_tokens=False,
        quantized_base=False,
        load_dtype=LoadDtype.FLOAT32,
        **kw,
    )


METHODS: Mapping[MethodType, MethodRecord] = MappingProxyType(
    {
        MethodType.FULL: _no_adapter(
            MethodType.FULL, trains_all_weights=True, oom_suggests_qlora=True
        ),
        MethodType.LORA: _adapter(MethodType.LORA, "lora", oom_suggests_qlora=True),
        MethodType.QLORA: _adapter(MethodType.QLORA, "lora", "quantization", quantized_base=True),
        MethodType.DORA: _adapter(MethodType.DORA, "lora", oom_suggests_qlora=True),
        MethodType.PROMPT_TUNING: _adapter(
            MethodType.PROMPT_TUNING, "prompt_tuning", mergeable=False, virtual_tokens=True
        ),
        MethodType.PREFIX_TUNING: _adapter(
            MethodType.PREFIX_TUNING, "prefix_tuning", mergeable=False, virtual_tokens=True
        ),
        MethodType.IA3: _adapter(MethodType.IA3, "ia3"),
        MethodType.BITFIT: _no_adapter(MethodType.BITFIT, trains_all_weights=False),
    }
)


def method_record(t: MethodType | str) -> MethodRecord:
    """The record of method type `t` (a MethodType or its wire string)."""
    return METHODS[MethodType(t)]


def methods_where(**facts: Any) -> tuple[MethodType, ...]:
    """The method types whose record has all of `facts`, in declaration order; e.g.
    `methods_where(adapter=True)`."""
    return tuple(t for t, r in METHODS.items() if all(getattr(r, k) == v for k, v in facts.items()))


class LoraBias(StrEnum):
    NONE = "none"
    ALL = "all"
    LORA_ONLY = "lora_only"


ModuleName = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_.\-*]+$")]


class LoraSpec(Spec):
    """LoRA settings (used by lora, qlora and dora)."""

    r: WireInt = Field(default=16, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: WireInt = Field(
        default=32, ge=1, le=4096, description="Scaling numerator (lora_alpha); scale = alpha/r."
    )
    dropout: WireFloat = Field(default=0.05, ge=0, lt=1, description="Dropout on the LoRA path.")
    target_modules: list[ModuleName] | None = Field(
        default=None,
        max_length=64,
        description="Module names to adapt. Default per architecture family: all attention and "
        "MLP projections for Llama/Mistral/Qwen-like models (q,k,v,o,gate,up,down_proj), "
        "query/key/value/dense for BERT-like ones; 'all-linear' adapts every linear layer.",
    )
    modules_to_save: list[ModuleName] | None = Field(
        default=None,
        max_length=64,
        description="Modules trained in full and saved with the adapter, e.g. [classifier] for a "
        "freshly initialised classification head.",
    )
    bias: LoraBias = Field(default=LoraBias.NONE, description="Which biases to train.")
    use_rslora: WireBool = Field(
        default=False, description="Rank-stabilised scaling (alpha/sqrt(r))."
    )


class QuantType(StrEnum):
    NF4 = "nf4"
    FP4 = "fp4"


class ComputeDtype(StrEnum):
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class QuantizationSpec(Spec):
    """bitsandbytes 4-bit quantization of the frozen base model (qlora)."""

    api_path = "spec.method.quantization"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.computeDtype != 'float32'",
                "qlora needs a 16-bit compute dtype (bfloat16 or float16); float32 compute "
                "defeats the memory saving",
                ".computeDtype",
            )
        )
    )

    bits: Literal[4] = Field(default=4, description="Bits per weight (4).")
    quant_type: QuantType = Field(default=QuantType.NF4, description="nf4 (recommended) or fp4.")
    double_quant: WireBool = Field(
        default=True, description="Quantize the quantization constants too (~0.4 bit/param saved)."
    )
    compute_dtype: ComputeDtype = Field(
        default=ComputeDtype.BFLOAT16,
        description="Dtype of matmuls on dequantized weights: bfloat16 (Ampere+) or float16.",
    )


class PromptTuningSpec(Spec):
    """Prompt tuning: learned soft-prompt embeddings, model weights frozen."""

    num_virtual_tokens: WireInt = Field(
        default=20, ge=1, le=1024, description="Soft-prompt length."
    )
    init_text: str | None = Field(
        default=None,
        max_length=4096,
        description="Initialise the soft prompt from this text's token embeddings (else random).",
    )


class PrefixTuningSpec(Spec):
    """Prefix tuning: learned key/value prefixes in every layer."""

    num_virtual_tokens: WireInt = Field(default=20, ge=1, le=1024, description="Prefix length.")


class IA3Spec(Spec):
    """IA3: learned rescaling vectors on attention and feed-forward activations."""

    target_modules: list[ModuleName] | None = Field(
        default=None, max_length=64, description="Modules to rescale; default per architecture."
    )
    feedforward_modules: list[ModuleName] | None = Field(
        default=None,
        max_length=64,
        description="Which of targetModules are feed-forward layers; default per architecture.",
    )


class MethodSpec(Spec):
    """How the model is adapted."""

    api_path = "spec.method"

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.freezeLayers) || self.type == 'full'",
                "freezeLayers applies only to type full",
                ".freezeLayers",
            ),
            cel(
                "!has(self.lora) || self.type in ['lora', 'qlora', 'dora']",
                "lora settings apply only to types lora, qlora, dora",
                ".lora",
            ),
            cel(
                "!has(self.quantization) || self.type == 'qlora'",
                "quantization applies only to type qlora",
                ".quantization",
            ),
            cel(
                "!has(self.promptTuning) || self.type == 'prompt-tuning'",
                "promptTuning applies only to type prompt-tuning",
                ".promptTuning",
            ),
            cel(
                "!has(self.prefixTuning) || self.type == 'prefix-tuning'",
                "prefixTuning applies only to type prefix-tuning",
                ".prefixTuning",
            ),
            cel(
                "!has(self.ia3) || self.type == 'ia3'",
                "ia3 settings apply only to type ia3",
                ".ia3",
            ),
        )
    )

    type: MethodType = Field(
        default=MethodType.LORA,
        description="full, lora, qlora (4-bit base + LoRA), dora, prompt-tuning, prefix-tuning, "
        "ia3, or bitfit (biases only).",
    )
    freeze_layers: WireInt | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="full only: keep the whole embedding stage (word, position and token-type "
        "embeddings, embedding norms) and the lowest N transformer layers frozen.",
    )
    lora: LoraSpec | None = Field(
        default=None, description="LoRA settings for lora/qlora/dora (defaults if omitted)."
    )
    quantization: QuantizationSpec | None = Field(
        default=None, description="4-bit quantization for qlora (nf4 + double quant if omitted)."
    )
    prompt_tuning: PromptTuningSpec | None = Field(
        default=None, description="prompt-tuning settings."
    )
    prefix_tuning: PrefixTuningSpec | None = Field(
        default=None, description="prefix-tuning settings."
    )
    ia3: IA3Spec | None = Field(default=None, description="ia3 settings.")

    def resolved(self) -> MethodSpec:
        """A copy with the defaults of the chosen type's settings filled in."""
        defaults = {
            "lora": LoraSpec,
            "quantization": QuantizationSpec,
            "prompt_tuning": PromptTuningSpec,
            "prefix_tuning": PrefixTuningSpec,
            "ia3": IA3Spec,
        }
        update: dict[str, Any] = {
            name: defaults[name]()
            for name in METHODS[MethodType(self.type)].settings
            if getattr(self, name) is None
        }
        return self.model_copy(update=update)
