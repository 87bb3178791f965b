"""Pure translations of the spec: PEFT configs, TrainingArguments/SFTConfig kwargs, precision
and dtype decisions, source helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubetune_api.v1alpha1 import (
    ConfigError,
    DatasetError,
    DatasetSpec,
    FineTuneJobSpec,
    MethodSpec,
    ModelError,
    QuantizationSpec,
)
from kubetune_trainer.methods import lora_targets, peft_config_kwargs
from kubetune_trainer.modelload import bnb_kwargs, family, load_dtype_name, resolve_precision
from kubetune_trainer.sources import (
    builder_for,
    check_model_dir,
    digest_listing,
    hub_ignore_patterns,
    select_shards,
)
from kubetune_trainer.trainargs import best_model_compatible, sft_kwargs, training_kwargs
from specdocs import spec_doc


def spec(**kw: Any) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(spec_doc(**kw))


def targs(s: FineTuneJobSpec, **kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(
        output_dir="/w", precision="fp32", cuda=False, has_eval=False, run_name="r", report_to=[]
    )
    args.update(kw)
    return training_kwargs(s, **args)


# --------------------------------------------------------------------------- methods


def test_default_lora_targets_per_family() -> None:
    assert family("llama") == family("qwen2") == family("mistral") == "llama"
    assert family("bert") == "bert" and family("gpt2") == "other"
    assert lora_targets(None, "llama") == [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"
    ]  # fmt: skip
    assert lora_targets(None, "bert") == ["query", "key", "value", "dense"]
    assert lora_targets(None, "other") == "all-linear"
    assert lora_targets(["all-linear"], "llama") == "all-linear"
    assert lora_targets(["c_attn"], "other") == ["c_attn"]


@pytest.mark.parametrize("method", ["lora", "qlora", "dora"])
def test_lora_family_config(method: str) -> None:
    m = MethodSpec.model_validate(
        {"type": method, "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "useRslora": True}}
    )
    name, kw = peft_config_kwargs(m, "causal-lm", "llama", "llama", "/m")
    assert name == "LoraConfig"
    assert kw["task_type"] == "CAUSAL_LM" and kw["r"] == 8 and kw["lora_alpha"] == 16
    assert kw["use_dora"] is (method == "dora") and kw["use_rslora"] is True
    assert "modules_to_save" not in kw


def test_classification_lora_keeps_modules_to_save() -> None:
    m = MethodSpec.model_validate({"type": "lora", "lora": {"modulesToSave": ["classifier"]}})
    _, kw = peft_config_kwargs(m, "sequence-classification", "bert", "bert", "/m")
    assert kw["task_type"] == "SEQ_CLS" and kw["modules_to_save"] == ["classifier"]
    assert kw["target_modules"] == ["query", "key", "value", "dense"]


def test_prompt_prefix_ia3_configs() -> None:
    pt = MethodSpec.model_validate(
        {"type": "prompt-tuning", "promptTuning": {"numVirtualTokens": 7, "initText": "go"}}
    )
    name, kw = peft_config_kwargs(pt, "causal-lm", "llama", "llama", "/models/x")
    assert name == "PromptTuningConfig"
    assert kw == {
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": 7,
        "prompt_tuning_init": "TEXT",
        "prompt_tuning_init_text": "go",
        "tokenizer_name_or_path": "/models/x",
    }
    name, kw = peft_config_kwargs(
        MethodSpec.model_validate({"type": "prefix-tuning"}), "causal-lm", "llama", "llama", "/m"
    )
    assert name == "PrefixTuningConfig" and kw["num_virtual_tokens"] == 20
    name, kw = peft_config_kwargs(MethodSpec(type="ia3"), "causal-lm", "llama", "llama", "/m")
    assert name == "IA3Config"
    assert kw["target_modules"] == ["k_proj", "v_proj", "down_proj"]
    assert kw["feedforward_modules"] == ["down_proj"]
    with pytest.raises(ConfigError, match=r"set method\.ia3\.targetModules"):
        peft_config_kwargs(MethodSpec(type="ia3"), "causal-lm", "other", "weird", "/m")


def test_peft_configs_construct() -> None:
    from kubetune_trainer.methods import build_peft_config

    for t in ("lora", "dora", "qlora", "prefix-tuning", "ia3"):
        cfg = build_peft_config(MethodSpec(type=t), "causal-lm", "llama", "llama", "/m")
        assert str(cfg.task_type) in ("CAUSAL_LM", "TaskType.CAUSAL_LM")


def test_bitfit_and_freeze_layers_on_a_tiny_model() -> None:
    import torch
    from kubetune_trainer.methods import bitfit, freeze_layers
    from transformers import (
        BertConfig,
        BertForSequenceClassification,
        LlamaConfig,
        LlamaForCausalLM,
    )

    bert_cfg = BertConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2,
    )  # fmt: skip
    bert_cfg.num_labels = 3
    bert = BertForSequenceClassification(bert_cfg)
    bitfit(bert, "sequence-classification")
    trainable = {n for n, p in bert.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(".bias") or n.startswith("classifier") for n in trainable)
    assert "classifier.weight" in trainable
    llama = LlamaForCausalLM(
        LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                    num_attention_heads=2, num_key_value_heads=1)
    )  # fmt: skip
    with pytest.raises(ConfigError, match="no bias parameters"):
        bitfit(llama, "causal-lm")
    for p in llama.parameters():
        p.requires_grad_(True)
    freeze_layers(llama, 2)
    assert not llama.model.embed_tokens.weight.requires_grad
    assert not any(p.requires_grad for p in llama.model.layers[1].parameters())
    assert all(p.requires_grad for p in llama.model.layers[2].parameters())
    assert llama.lm_head.weight.requires_grad
    with pytest.raises(ConfigError, match="only 3 layers"):
        freeze_layers(llama, 4)
    assert isinstance(llama.model.layers, torch.nn.ModuleList)


# --------------------------------------------------------------------------- precision


def test_precision_and_dtypes() -> None:
    assert resolve_precision("auto", cuda=False, bf16_supported=False) == "fp32"
    assert resolve_precision("auto", cuda=True, bf16_supported=True) == "bf16"
    assert resolve_precision("auto", cuda=True, bf16_supported=False) == "fp16"
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        resolve_precision("fp16", cuda=False, bf16_supported=False)
    with pytest.raises(ConfigError, match="does not support bfloat16"):
        resolve_precision("bf16", cuda=True, bf16_supported=False)
    assert load_dtype_name(MethodSpec(type="lora"), "bf16", cuda=True) == "bfloat16"
    assert load_dtype_name(MethodSpec(type="lora"), "fp16", cuda=True) == "float16"
    assert load_dtype_name(MethodSpec(type="full"), "bf16", cuda=True) == "float32"
    assert load_dtype_name(MethodSpec(type="lora"), "fp32", cuda=False) == "float32"
    q = QuantizationSpec.model_validate({"quantType": "fp4", "doubleQuant": False})
    assert bnb_kwargs(q) == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "fp4",
        "bnb_4bit_use_double_quant": False,
        "bnb_4bit_compute_dtype": "bfloat16",
    }


# --------------------------------------------------------------------------- training args


def test_training_kwargs_map_the_hyperparameters() -> None:
    s = spec(
        dataset={"s3Uri": "s3://bkt/d.jsonl", "validation": {"splitFraction": 0.1}},
        hyperparameters={
            "epochs": 2,
            "learningRate": 1e-4,
            "lrScheduler": "cosine",
            "warmupRatio": 0.1,
            "batchSize": 8,
            "gradientAccumulationSteps": 4,
            "gradientCheckpointing": True,
            "evalStrategy": "steps",
            "evalSteps": 50,
            "saveSteps": 100,
            "saveTotalLimit": 3,
            "groupByLength": True,
            "earlyStopping": {"patience": 2, "metric": "eval_accuracy"},
        },
    )
    kw = targs(s, has_eval=True, precision="bf16", cuda=True, report_to=["tensorboard"])
    assert kw["num_train_epochs"] == 2 and kw["max_steps"] == -1
    assert kw["learning_rate"] == 1e-4 and kw["lr_scheduler_type"] == "cosine"
    assert kw["warmup_steps"] == 0.1  # transformers 5: a float below 1 is a ratio
    assert kw["per_device_train_batch_size"] == 8 and kw["per_device_eval_batch_size"] == 8
    assert kw["gradient_accumulation_steps"] == 4
    assert kw["activation_checkpointing"] is True
    assert kw["bf16"] is True and kw["fp16"] is False and kw["use_cpu"] is False
    assert kw["eval_strategy"] == "steps" and kw["eval_steps"] == 50
    assert kw["save_steps"] == 100 and kw["save_total_limit"] == 3
    assert kw["train_sampling_strategy"] == "group_by_length"
    assert kw["metric_for_best_model"] == "eval_accuracy" and kw["greater_is_better"] is True
    assert kw["load_best_model_at_end"] is True  # saveSteps 100 is a multiple of evalSteps 50
    assert kw["logging_nan_inf_filter"] is False
    # SFTConfig/TrainingArguments accept exactly these
    from trl import SFTConfig

    SFTConfig(**{**kw, "bf16": False, "use_cpu": True}, **sft_kwargs(s))


def test_training_kwargs_cpu_defaults_and_guards() -> None:
    s = spec()
    kw = targs(s)
    assert kw["max_steps"] == -1 and kw["eval_strategy"] == "no"
    assert kw["activation_checkpointing"] is False  # explicit: SFTConfig defaults it to True
    assert kw["use_cpu"] is True and not kw["bf16"] and not kw["fp16"]
    assert kw["report_to"] == "none"
    assert "warmup_steps" not in kw and "load_best_model_at_end" not in kw
    # The API refuses it with gpus: 0 (tests/unit/test_api_models.py); a pod that asked for a
    # GPU but found no CUDA still gets the trainer's own refusal.
    with pytest.raises(ConfigError, match="paged_adamw_8bit needs a GPU"):
        targs(spec(hyperparameters={"optimizer": "paged_adamw_8bit"}, resources={"gpus": 1}))
    from transformers import TrainingArguments

    TrainingArguments(**kw)


def test_best_model_compatibility() -> None:
    h = spec(
        dataset={"s3Uri": "s3://bkt/d.jsonl", "validation": {"splitFraction": 0.1}},
        hyperparameters={"evalStrategy": "steps", "evalSteps": 30, "saveSteps": 50},
    ).hyperparameters
    assert not best_model_compatible(h)
    assert not best_model_compatible(h.model_copy(update={"save_strategy": "no"}))
    assert best_model_compatible(
        h.model_copy(update={"eval_strategy": "epoch", "save_strategy": "epoch"})
    )


def test_sft_kwargs_by_format() -> None:
    pc = spec(dataset={"s3Uri": "s3://bkt/d.jsonl", "format": "prompt-completion"})
    assert sft_kwargs(pc)["completion_only_loss"] is True
    assert sft_kwargs(pc)["assistant_only_loss"] is False
    msgs = spec(dataset={"s3Uri": "s3://bkt/d.jsonl", "format": "messages", "packing": True})
    kw = sft_kwargs(msgs, padding_free=True)
    assert kw["assistant_only_loss"] is True and kw["completion_only_loss"] is None
    assert kw["packing"] is True and kw["packing_strategy"] == "bfd" and kw["padding_free"]
    assert sft_kwargs(spec())["max_length"] == 1024


# --------------------------------------------------------------------------- sources


def test_file_formats_and_shards() -> None:
    assert builder_for("a/train.jsonl") == "json"
    assert builder_for("train.json.gz") == "json"
    assert builder_for("part-0.parquet") == "parquet"
    assert builder_for("x.csv") == "csv"
    assert builder_for("_SUCCESS") is None
    assert builder_for("data.txt", "jsonl") is None
    assert builder_for("data.json", "jsonl") == "json"
    shards, b = select_shards(["b.jsonl", "_SUCCESS", "a.jsonl", "c.crc"], "auto", "x")
    assert shards == ["a.jsonl", "b.jsonl"] and b == "json"
    with pytest.raises(DatasetError, match="mixes file formats"):
        select_shards(["a.jsonl", "b.parquet"], "auto", "dataset s3://bkt/p/")
    with pytest.raises(DatasetError, match=r"no data files \(.jsonl, .json, .parquet or .csv\)"):
        select_shards(["README"], "auto", "dataset s3://bkt/p/")
    assert select_shards(["a.jsonl", "b.parquet"], "parquet", "x") == (["b.parquet"], "parquet")


def test_model_dir_checks(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        check_model_dir(tmp_path / "nope", "s3://bkt/m/")
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(ModelError, match=r"no config\.json"):
        check_model_dir(tmp_path, "s3://bkt/m/")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(
        ModelError, match=r"config.json but no weights .* found: config.json, tokenizer.json"
    ):
        check_model_dir(tmp_path, "s3://bkt/m/")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    check_model_dir(tmp_path, "s3://bkt/m/")


def test_hub_patterns_and_digests() -> None:
    ignore = hub_ignore_patterns(["model.safetensors", "pytorch_model.bin", "x.py"], False)
    assert "*.bin" in ignore and "*.py" in ignore
    assert "*.bin" not in hub_ignore_patterns(["pytorch_model.bin"], True)
    assert "*.py" not in hub_ignore_patterns([], True)
    a = digest_listing([("a", 1, "e1"), ("b", 2, "e2")])
    assert a == digest_listing([("b", 2, "e2"), ("a", 1, "e1")])
    assert a != digest_listing([("a", 1, "e1"), ("b", 2, "e3")])


def test_dataset_spec_defaults_used_by_the_trainer() -> None:
    d = DatasetSpec.model_validate({"s3Uri": "s3://bkt/d.jsonl"})
    assert d.completion_only_loss and d.assistant_only_loss and d.bad_rows == "fail"


def test_merge_device(tmp_path: Path) -> None:
    from kubetune_trainer.save import merge_device

    (tmp_path / "model.safetensors").write_bytes(b"x" * 1000)
    assert merge_device(tmp_path, "bfloat16", None) == "cpu"
    assert merge_device(tmp_path, "bfloat16", 10_000) == "cuda"
    assert merge_device(tmp_path, "bfloat16", 1_200) == "cpu"  # no headroom
    assert merge_device(tmp_path, "float32", 2_000) == "cpu"  # float32 doubles it


def test_classification_lora_trains_and_saves_the_head_without_being_told() -> None:
    """PEFT's SEQ_CLS task type puts classifier/score into modules_to_save by itself."""
    from kubetune_trainer.methods import apply
    from kubetune_trainer.modelload import LoadedModel
    from peft import get_peft_model_state_dict
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2,
    )  # fmt: skip
    cfg.num_labels = 3
    loaded = LoadedModel(BertForSequenceClassification(cfg), None, "bert", "bert", "float32", False)
    model = apply(loaded, MethodSpec(type="lora"), "sequence-classification", "/m")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in n and "modules_to_save" in n for n in trainable), trainable
    saved = get_peft_model_state_dict(model)
    assert any(k.startswith("base_model.model.classifier") for k in saved), list(saved)


def test_trainable_copies_of_a_16_bit_base_are_fp32() -> None:
    """On a GPU the frozen base is loaded in bf16; the classifier that LoRA trains as
    modules_to_save must still get fp32 weights (AdamW steps on bf16 weights round away)."""
    import torch
    from kubetune_trainer.methods import apply
    from kubetune_trainer.modelload import LoadedModel
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2,
    )  # fmt: skip
    cfg.num_labels = 3
    bert = BertForSequenceClassification(cfg).to(torch.bfloat16)
    loaded = LoadedModel(bert, None, "bert", "bert", "bfloat16", False)
    model = apply(loaded, MethodSpec(type="lora"), "sequence-classification", "/m")
    trainable = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trainable)
    assert set(trainable.values()) == {torch.float32}, trainable
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
