"""bench/example_bench.py's synthetic inputs: a seeded random-weight model of each example
model's published shape (or a tiny one of the same architecture for CPU wiring checks), and each
example's dataset, synthetic, with its columns and realistic lengths."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from product_bench import SHAPES as PRODUCT_SHAPES
from product_bench import write_rows as write_quotes
from trainer_bench_cases import MODELS as TRAINER_BENCH_MODELS
from trainer_e2e import WORDS

# Published shapes (config.json of the Hub models); random weights. The tokenizer is the
# trainer's test BPE/WordPiece tokenizer (~1k tokens): the vocabulary (embedding and LM head
# size) is the published one, only the ids in use are fewer.
SHAPES: dict[str, dict[str, Any]] = {
    "bert-base-uncased": {
        "model_type": "bert",
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
    },
    "bloomz-560m": {
        "model_type": "bloom",
        "vocab_size": 250880,
        "hidden_size": 1024,
        "n_layer": 24,
        "n_head": 16,
    },
    "qwen2.5-0.5b": {  # Qwen/Qwen2.5-0.5B-Instruct
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True,
    },
    # meta-llama/Llama-3.2-1B, the trainer bench's "1b" (llama3 RoPE scaling added in
    # build_model_dir)
    "llama-3.2-1b": {
        "model_type": "llama",
        **{k: v for k, v in TRAINER_BENCH_MODELS["1b"].items() if k != "rope_scaling_factor"},
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
    },
    "mistral-7b": PRODUCT_SHAPES["mistral-7b"],
}

# --model tiny: the same architectures, a few hundred thousand weights (CPU wiring checks);
# vocab_size 0 = the tokenizer's (a 150k-word LM head on CPU is gigabytes of logits).
_TINY_DECODER = {  # Qwen and Llama: grouped-query attention kept (4 heads, 2 key/value)
    "vocab_size": 0,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
TINY: dict[str, dict[str, Any]] = {
    "bert-base-uncased": {
        **SHAPES["bert-base-uncased"],
        "vocab_size": 0,
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 128,
    },
    "bloomz-560m": {
        "model_type": "bloom",
        "vocab_size": 0,
        "hidden_size": 64,
        "n_layer": 2,
        "n_head": 4,
    },
    "qwen2.5-0.5b": {**SHAPES["qwen2.5-0.5b"], **_TINY_DECODER},
    "llama-3.2-1b": {**SHAPES["llama-3.2-1b"], **_TINY_DECODER, "head_dim": 16},
    "mistral-7b": PRODUCT_SHAPES["tiny"],
}

BF16_CHECKPOINT = {"bloomz-560m", "qwen2.5-0.5b", "llama-3.2-1b", "mistral-7b"}  # BERT: fp32


def build_model_dir(shape: str, fields: dict[str, Any], dest: Path, device: str) -> None:
    """A seeded random-weight model of `fields`' shape, saved like the Hub's (safetensors,
    config, tokenizer), in the published checkpoint's dtype."""
    import torch
    from kubetune_trainer.testing.tiny import build_bert_tokenizer, build_llama_tokenizer
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    fields = dict(fields)
    model_type = fields.pop("model_type")
    bert = model_type == "bert"
    tok = build_bert_tokenizer() if bert else build_llama_tokenizer()
    tok.model_max_length = 512 if bert else 4096
    if model_type == "llama":
        fields["rope_theta"] = 500000.0
        fields["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": 32.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    cfg = AutoConfig.for_model(model_type, **fields)
    cfg.vocab_size = max(int(fields.get("vocab_size") or len(tok)), len(tok))
    cfg.pad_token_id = tok.pad_token_id
    if not bert:
        cfg.bos_token_id, cfg.eos_token_id = tok.bos_token_id, tok.eos_token_id
    torch.manual_seed(0)
    dtype = torch.bfloat16 if shape in BF16_CHECKPOINT else torch.float32
    with torch.device(device):
        m = (AutoModel if bert else AutoModelForCausalLM).from_config(cfg, dtype=dtype)
    m.save_pretrained(dest)
    tok.save_pretrained(dest)
    del m


# ---------------------------------------------------------------------------------------------
# The data
# ---------------------------------------------------------------------------------------------


def _words(rng: Any, mean: float, lo: int, hi: int) -> str:
    import numpy as np

    k = int(np.clip(rng.lognormal(math.log(mean) - 0.405, 0.9), lo, hi))
    return " ".join(rng.choice(WORDS, k))


def write_data(name: str, path: Path, n: int, seed: int = 0) -> None:
    """IMDB-like reviews (~230 words), SST-2-like sentences (~10 words), support chats (system,
    user, assistant, sometimes a second exchange), instruction pairs (parquet, question ~25 and
    answer ~60 words), complaint tweets (~25 words, one-word completion), seed quotes."""
    import numpy as np

    if name == "quotes.jsonl":
        write_quotes(path, n, seed)
        return
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for _ in range(n):
        label = int(rng.integers(2))
        if name == "imdb.jsonl":
            rows.append({"text": _words(rng, 230, 10, 2000), "label": label})
        elif name == "sst2.jsonl":
            rows.append({"sentence": _words(rng, 10, 2, 60), "label": label})
        elif name == "chats.jsonl":
            msgs = [{"role": "system", "content": _words(rng, 15, 5, 40)}]
            for _turn in range(1 + int(rng.random() < 0.5)):
                msgs.append({"role": "user", "content": _words(rng, 40, 3, 300)})
                msgs.append({"role": "assistant", "content": _words(rng, 120, 5, 800)})
            rows.append({"messages": msgs})
        elif name == "instructions.parquet":
            # the prompt ends on a token boundary (": "), the completion starts with a space
            q, ans = _words(rng, 25, 3, 200), _words(rng, 60, 3, 400)
            rows.append({"question": f"Question: {q}\nAnswer:", "answer": " " + ans})
        elif name == "complaints.jsonl":
            completion = " complaint" if label else " no complaint"
            rows.append(
                {"prompt": "Tweet: " + _words(rng, 25, 3, 80) + " Label:", "completion": completion}
            )
        else:
            raise ValueError(f"no generator for {name}")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        with path.open("w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
