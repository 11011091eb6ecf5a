"""Tiny random decoders of the architectures users bring (2 layers, hidden 64, grouped-query
attention where the architecture has it), saved as the hub ships them (bf16 weights), each with a
byte-level BPE tokenizer that keeps its real conventions: which special tokens it has, whether it
prepends BOS, whether it has a pad token, and which side it pads."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import ByteLevelBPETokenizer, processors

CORPUS = [
    "The food was great and the service was slow.",
    "Loud room, rude waiter, cold soup.",
    "We loved the ambiance; the pasta was fine.",
    "Terrible noise but a friendly staff.",
    "Great pasta, but we waited an hour.",
    "The waiter was rude and the food was terrible.",
] * 20

SIZE = dict(
    hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, max_position_embeddings=256
)
GQA = dict(SIZE, num_key_value_heads=2)

# name: (config class, its size options, special tokens {role: token}, prepends BOS, padding side)
ARCHITECTURES = {
    "llama": (
        transformers.LlamaConfig,
        GQA,  # Llama-3: no pad token, BOS prepended
        {"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>"},
        True,
        "left",
    ),
    "qwen2": (
        transformers.Qwen2Config,
        GQA,  # Qwen2.5: pad = <|endoftext|>, no BOS
        {"eos": "<|im_end|>", "pad": "<|endoftext|>"},
        False,
        "right",
    ),
    "mistral": (
        transformers.MistralConfig,
        dict(GQA, head_dim=16),  # no pad token, BOS prepended
        {"bos": "<s>", "eos": "</s>", "unk": "<unk>"},
        True,
        "left",
    ),
    "gemma2": (
        transformers.Gemma2Config,
        dict(GQA, head_dim=16),  # its own pad token, BOS, pads left
        {"bos": "<bos>", "eos": "<eos>", "pad": "<pad>", "unk": "<unk>"},
        True,
        "left",
    ),
    "phi3": (
        transformers.Phi3Config,
        GQA,  # fused qkv_proj and gate_up_proj; pad = <|endoftext|>
        {"bos": "<s>", "eos": "<|endoftext|>", "pad": "<|endoftext|>", "unk": "<unk>"},
        False,
        "left",
    ),
    "gpt2": (
        transformers.GPT2Config,
        dict(n_embd=64, n_layer=2, n_head=4, n_positions=256),  # no pad, no BOS
        {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>"},
        False,
        "right",
    ),
    "opt": (
        transformers.OPTConfig,
        dict(
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            ffn_dim=128,
            max_position_embeddings=256,
            word_embed_proj_dim=64,
        ),
        {"bos": "</s>", "eos": "</s>", "pad": "<pad>", "unk": "<unk>"},
        True,
        "right",
    ),  # OPT prepends </s>
}


def tiny_tokenizer(special: dict[str, str], prepends_bos: bool, padding_side: str):
    tokens = list(dict.fromkeys(special.values()))
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=tokens)
    if prepends_bos:
        bos = special["bos"]
        bpe._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, bpe.token_to_id(bos))]
        )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        padding_side=padding_side,
        **{f"{role}_token": token for role, token in special.items()},
    )


def save_tiny_decoder(path: Path, name: str, dtype: torch.dtype = torch.bfloat16) -> Path:
    config_class, size, special, prepends_bos, padding_side = ARCHITECTURES[name]
    tokenizer = tiny_tokenizer(special, prepends_bos, padding_side)
    ids = {f"{role}_token_id": tokenizer.convert_tokens_to_ids(t) for role, t in special.items() if role != "unk"}
    config = config_class(vocab_size=len(tokenizer), **size, **ids)
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
