"""Tiny random checkpoints of real architectures, written with save_pretrained and reloaded by path.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a few sentences, the weights are
random. Good for invariance tests (batched = alone, sdpa = eager ...), meaningless for quality.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    Gemma3TextConfig,
    Gemma3TextModel,
    LlamaConfig,
    LlamaModel,
    MistralConfig,
    MistralModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3Model,
)

ARCHITECTURES = ("llama", "qwen3", "mistral", "gemma3")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Retrieval-augmented generation needs good embeddings of long documents.",
    "Compress the Context in one word: Query: Context: means sentence rewritten",
    "Key and value states of the final token are re-routed as a prefix.",
    "Meeting transcripts, scientific abstracts and essays make a varied corpus 0123456789.",
    'This sentence : "" means in one word:" Rewrite the sentence: , rewritten sentence:',
]


def build_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", tok.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def _config(arch: str, vocab: int, layers: int) -> tuple[type, object]:
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    if arch == "llama":
        return LlamaModel, LlamaConfig(**common)
    if arch == "qwen3":
        return Qwen3Model, Qwen3Config(**common, head_dim=16)
    if arch == "mistral":
        return MistralModel, MistralConfig(**common, sliding_window=24)
    if arch == "gemma3":
        types = ["sliding_attention" if (i + 1) % 3 else "full_attention" for i in range(layers)]
        return Gemma3TextModel, Gemma3TextConfig(
            **common, head_dim=16, sliding_window=24, layer_types=types, query_pre_attn_scalar=16
        )
    raise ValueError(arch)


def build_checkpoint(arch: str, directory: Path, layers: int = 6, seed: int = 0) -> Path:
    """Write a tiny random ``arch`` model and its tokenizer to ``directory``; return it."""
    tokenizer = build_tokenizer()
    model_cls, config = _config(arch, len(tokenizer), layers)
    torch.manual_seed(seed)
    model = model_cls(config)
    # random init at std 0.02 makes every token look alike; widen it so layers do visible work
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.2 if "embed" in name else 0.12)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
