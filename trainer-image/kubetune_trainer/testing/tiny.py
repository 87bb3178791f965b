"""Tiny models built from configs, saved like real ones (config, safetensors, tokenizer).

No downloads: the tokenizers are trained here with the `tokenizers` library on the synthetic
corpus, the models are randomly initialised with a fixed seed. Built once and cached under
~/.cache/kubetune/models/<name>-<build id> (KUBETUNE_CACHE overrides ~/.cache/kubetune).

- tiny-llama: LlamaForCausalLM, hidden 64, 2 layers, byte-level BPE tokenizer (any text
  encodes, no unknown tokens), pad/eos tokens and a chat template with {% generation %}
  markers so assistant-only loss works.
- tiny-bert: BertForSequenceClassification-ready BERT (hidden 64, 2 layers), WordPiece.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import synthetic

BUILD_VERSION = "5"

# The tiny Llama's chat template. Assistant turns (content and the end-of-turn token) sit
# inside {% generation %} so trl's assistant_only_loss trains exactly them, stop token included.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|assistant|>\\n' }}"
    "{%- generation %}{{- message['content'] + '<|end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)

LLAMA_SPECIAL = ["<|pad|>", "<|endoftext|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
BERT_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def cache_root() -> Path:
    base = os.environ.get("KUBETUNE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "kubetune"
    )
    return Path(base) / "models"


def _build_id(name: str) -> str:
    import tokenizers
    import transformers

    h = hashlib.sha256(
        f"{name}|{BUILD_VERSION}|{transformers.__version__}|{tokenizers.__version__}|"
        f"{CHAT_TEMPLATE}|{synthetic.corpus()}".encode()
    )
    return h.hexdigest()[:12]


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    target = cache_root() / f"{name}-{_build_id(name)}"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)  # atomic; a concurrent builder may have won
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_llama_tokenizer(vocab_size: int = 1024) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=LLAMA_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic.corpus() * 3, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|pad|>",
        eos_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        additional_special_tokens=LLAMA_SPECIAL[2:],
        model_max_length=256,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_bert_tokenizer(vocab_size: int = 1024) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=BERT_SPECIAL, show_progress=False
    )
    tok.train_from_iterator(synthetic.corpus() * 3, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )


def _save_llama(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = build_llama_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        # ~1/sqrt(hidden): with the default 0.02 a 64-wide random model's logits are so small
        # that adapters on the inner layers cannot make any token likely.
        initializer_range=0.125,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(
        eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")],
        pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)


def _save_bert(out: Path) -> None:
    import torch
    from transformers import BertConfig, BertModel

    tok = build_bert_tokenizer()
    cfg = BertConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.125,  # as for tiny-llama: usable activations at width 64
    )
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)


def tiny_llama() -> Path:
    """Directory of the tiny causal LM (built on first use)."""
    return _cached("tiny-llama", _save_llama)


def tiny_bert() -> Path:
    """Directory of the tiny BERT encoder (classification heads are added at load time)."""
    return _cached("tiny-bert", _save_bert)
