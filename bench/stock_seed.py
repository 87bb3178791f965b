#!/usr/bin/env python3
"""The seed's QLoRA SFT script (/work/shared/seeds/001_*.txt), kept as the stock baseline.

A faithful copy, setting by setting: BitsAndBytesConfig(nf4, double quant, bf16 compute),
`from_pretrained(device_map="auto")`, `use_cache=False`, `pretraining_tp=1`,
`prepare_model_for_kbit_training` (which also turns on reentrant gradient checkpointing and
casts the frozen non-4-bit weights to fp32), `LoraConfig(r=16, alpha=32, dropout=0.05,
bias="none", CAUSAL_LM)` with PEFT's default targets (q_proj, v_proj for Mistral/Llama),
`pad_token = eos_token`, rows mapped to `f"Quote: {quote} Author: {author}"`, batch 4,
accumulation 1, lr 2e-4, bf16, max_grad_norm 0.3, warmup_ratio 0.03 (ignored by "constant", as
in the seed), group_by_length, constant schedule, max length 1024, SFTTrainer.

What the current libraries force to change, and nothing else:
- trl 1.x has no `max_seq_length`/`dataset_text_field`/`tokenizer` arguments on SFTTrainer: they
  are SFTConfig's `max_length`/`dataset_text_field` and `processing_class`; SFTConfig keeps
  TrainingArguments' `gradient_checkpointing=False` (the model already checkpoints through
  prepare_model_for_kbit_training, as in the seed);
- transformers 5 has no `group_by_length`: it is `train_sampling_strategy="group_by_length"`,
  and `warmup_ratio` is a float `warmup_steps`;
- trl 1.x refuses `peft_config` together with an already-wrapped PeftModel (the seed passes
  both; older trl ignored the second), so the wrapped model goes alone;
- `max_steps`, `report_to="none"`, the data path and `seed` come from the benchmark (and
  `gradient_accumulation_steps` for the benchmark's accumulation case).

`--method lora` is the same script without quantization: bf16 weights, no k-bit preparation
(so no gradient checkpointing), everything else as above.

    python bench/stock_seed.py --model-dir DIR --data rows.jsonl --steps 40 --method qlora
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def build(
    model_dir: str | Path,
    data_path: str | Path,
    *,
    method: str = "qlora",
    accumulation: int = 1,
    steps: int = 40,
    output_dir: str | Path = "/tmp/stock-results",
    seed: int = 42,
) -> Any:
    """The seed script up to (not including) `trainer.train()`; returns the SFTTrainer."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(seed)  # the seed script relies on Trainer's own seeding; LoRA A is drawn before it
    cuda = torch.cuda.is_available()
    # 1. Load a 4-bit quantized base model and tokenizer
    kwargs: dict[str, Any] = {"device_map": "auto" if cuda else None}
    if method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    else:
        kwargs["dtype"] = torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    model.config.use_cache = False
    model.config.pretraining_tp = 1
    if method == "qlora":
        model = prepare_model_for_kbit_training(model)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.pad_token = tokenizer.eos_token
    # 2. Define LoRA configuration
    lora_config = LoraConfig(
        r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora_config)
    # 3. Load and format your dataset
    data = load_dataset("json", data_files={"train": str(data_path)})
    data = data.map(lambda x: {"text": f"Quote: {x['quote']} Author: {x['author']}"})
    # 4. Set up training arguments
    training_args = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=1,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        learning_rate=2e-4,
        fp16=False,
        bf16=cuda,
        max_grad_norm=0.3,
        max_steps=steps,
        warmup_steps=0.03,
        train_sampling_strategy="group_by_length",
        lr_scheduler_type="constant",
        report_to="none",
        gradient_checkpointing=False,
        dataset_text_field="text",
        max_length=1024,
        seed=seed,
        use_cpu=not cuda,
        save_strategy="no",
        disable_tqdm=True,
    )
    # 5. Initialize the SFTTrainer
    return SFTTrainer(
        model=model,
        train_dataset=data["train"],
        processing_class=tokenizer,
        args=training_args,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--method", default="qlora", choices=["qlora", "lora"])
    p.add_argument("--steps", type=int, default=40)
    a = p.parse_args()
    trainer = build(a.model_dir, a.data, method=a.method, steps=a.steps)
    # 6. Train the model
    trainer.train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
