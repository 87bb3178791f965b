#!/usr/bin/env python3
"""The stock equivalents of the single-GPU example manifests (issue 13 floor 3's baselines).

Each function is the example's spec written as a plain transformers / peft / trl script, the
way a user writes it from the library docs: the spec's settings where the manifest writes
them, kubetune's documented defaults where it leaves one out that changes the work a step does
(LoRA dropout 0.05, kubetune's default LoRA targets for Llama-like models, no gradient
checkpointing: trl's SFTConfig would checkpoint by default), and the libraries' own defaults for
everything else (attention: sdpa; padding to the longest row of the batch;
no accumulation folding). What a benchmark cannot do the same way on both sides is the same on
both: model and data from local paths, `max_steps`, no evaluation, no checkpoints, no tracking.

Each `build_*` returns the ready Trainer (the script up to, not including, `trainer.train()`).
The Mistral QLoRA row is the seed script itself, `stock_seed.build`.

    python bench/stock_examples.py --row bert-lora --model-dir DIR --data rows.jsonl --steps 20
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

SEED = 42  # kubetune's default hyperparameters.seed; Trainer's default too


def _common(cuda: bool, steps: int, output_dir: str | Path) -> dict[str, Any]:
    """What the benchmark fixes on both sides (see the module docstring)."""
    return {
        "output_dir": str(output_dir),
        "max_steps": steps,
        "bf16": cuda,  # spec precision auto (or bf16): bf16 on the H200, fp32 on CPU
        "use_cpu": not cuda,
        "eval_strategy": "no",
        "save_strategy": "no",
        "report_to": "none",
        "seed": SEED,
        "disable_tqdm": True,
    }


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _bert_classifier(model_dir: Path) -> tuple[Any, Any]:
    """The sentiment classifier both BERT examples start from: two labels, named."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    set_seed(SEED)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(
        str(model_dir),
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    return model, tok


def _tokenized(tok: Any, data: Path, column: str, max_length: int) -> Any:
    """The JSON lines' text column, tokenized and truncated (padding is the collator's)."""
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(data))["train"]
    return ds.map(
        lambda b: tok(b[column], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=[column],
    )


def _classifier_trainer(model: Any, tok: Any, ds: Any, **args: Any) -> Any:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    return Trainer(
        model=model,
        args=TrainingArguments(**args),
        train_dataset=ds,
        processing_class=tok,
        data_collator=DataCollatorWithPadding(tok),
    )


def build_bert_full(model_dir: Path, data: Path, steps: int, output_dir: Path) -> Any:
    """examples/bert-sentiment-full.yaml: the classic Hugging Face text-classification recipe."""
    model, tok = _bert_classifier(model_dir)
    ds = _tokenized(tok, data, "text", 512)
    return _classifier_trainer(
        model,
        tok,
        ds,
        num_train_epochs=3,
        per_device_train_batch_size=16,
        learning_rate=2e-5,
        lr_scheduler_type="linear",
        warmup_steps=0.1,  # warmupRatio 0.1 (transformers 5 takes the ratio as a float)
        weight_decay=0.01,
        **_common(_cuda(), steps, output_dir),
    )


def build_bert_lora(model_dir: Path, data: Path, steps: int, output_dir: Path) -> Any:
    """examples/bert-lora-classifier.yaml: PEFT's sequence-classification LoRA recipe."""
    from peft import LoraConfig, get_peft_model

    model, tok = _bert_classifier(model_dir)
    model = get_peft_model(
        model,
        LoraConfig(
            task_type="SEQ_CLS",
            r=8,
            lora_alpha=32,
            lora_dropout=0.05,
            bias="none",
            target_modules=["query", "value"],
            modules_to_save=["classifier"],
        ),
    )
    ds = _tokenized(tok, data, "sentence", 128)
    return _classifier_trainer(
        model,
        tok,
        ds,
        num_train_epochs=3,
        per_device_train_batch_size=32,
        learning_rate=5e-4,
        **_common(_cuda(), steps, output_dir),
    )


def _causal_lm(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    set_seed(SEED)
    # dtype "auto" (transformers 5's default): the checkpoint's bf16
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return model, tok


def build_chat_sft(model_dir: Path, data: Path, steps: int, output_dir: Path) -> Any:
    """examples/chat-messages-sft.yaml: trl SFT on conversations, assistant-only loss, LoRA."""
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tok = _causal_lm(model_dir)
    ds = load_dataset("json", data_files=str(data))["train"]
    args = SFTConfig(
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        gradient_checkpointing=True,
        max_length=2048,
        packing=False,
        assistant_only_loss=True,
        **_common(_cuda(), steps, output_dir),
    )
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        target_modules="all-linear",
    )
    return SFTTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config
    )


def build_prompt_completion(model_dir: Path, data: Path, steps: int, output_dir: Path) -> Any:
    """examples/prompt-completion-sft.yaml: trl SFT on prompt/completion pairs, completion-only
    loss, packing, DoRA on every projection."""
    from datasets import load_dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    model, tok = _causal_lm(model_dir)
    ds = load_dataset("parquet", data_files=str(data))["train"]
    ds = ds.rename_columns({"question": "prompt", "answer": "completion"})
    args = SFTConfig(
        num_train_epochs=3,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=4,
        learning_rate=1e-4,
        lr_scheduler_type="cosine",
        warmup_steps=50,
        max_length=1024,
        gradient_checkpointing=False,  # the spec's (default) value; trl's own default is True
        packing=True,
        completion_only_loss=True,
        **_common(_cuda(), steps, output_dir),
    )
    peft_config = LoraConfig(
        task_type="CAUSAL_LM",
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        use_dora=True,
        # the spec names no targets: kubetune's default for Llama-like models, every projection
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
    )
    return SFTTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config
    )


def build_prompt_tuning(model_dir: Path, data: Path, steps: int, output_dir: Path) -> Any:
    """examples/prompt-tuning.yaml: PEFT prompt tuning (20 virtual tokens from a text), trl SFT
    on prompt/completion rows."""
    from datasets import load_dataset
    from peft import PromptTuningConfig, PromptTuningInit
    from trl import SFTConfig, SFTTrainer

    model, tok = _causal_lm(model_dir)
    ds = load_dataset("json", data_files=str(data))["train"]
    args = SFTConfig(
        num_train_epochs=10,
        per_device_train_batch_size=8,
        learning_rate=0.03,
        max_length=256,
        gradient_checkpointing=False,  # the spec's (default) value; trl's own default is True
        **_common(_cuda(), steps, output_dir),
    )
    peft_config = PromptTuningConfig(
        task_type="CAUSAL_LM",
        prompt_tuning_init=PromptTuningInit.TEXT,
        num_virtual_tokens=20,
        prompt_tuning_init_text="Classify if the tweet is a complaint or not:",
        tokenizer_name_or_path=str(model_dir),
    )
    return SFTTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config
    )


def build_mistral_qlora(model_dir: Path, data: Path, steps: int, output_dir: Path) -> Any:
    """examples/mistral-7b-qlora-quotes.yaml: the seed script (bench/stock_seed.py)."""
    from stock_seed import build

    return build(model_dir, data, method="qlora", steps=steps, output_dir=output_dir)


BUILDERS = {
    "bert-full": build_bert_full,
    "bert-lora": build_bert_lora,
    "chat-sft": build_chat_sft,
    "prompt-completion": build_prompt_completion,
    "prompt-tuning": build_prompt_tuning,
    "mistral-qlora": build_mistral_qlora,
}


def build(row: str, model_dir: Path, data: Path, steps: int, output_dir: Path) -> Any:
    return BUILDERS[row](model_dir, data, steps, output_dir)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--row", required=True, choices=sorted(BUILDERS))
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--output-dir", type=Path, default=Path("/tmp/stock-examples"))
    a = p.parse_args()
    build(a.row, a.model_dir, a.data, a.steps, a.output_dir).train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
