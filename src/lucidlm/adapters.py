"""What of a pretrained backbone trains: all of it, a LoRA adapter (PEFT), or nothing (``freeze``).

With an adapter or a frozen backbone a saved run holds only what trained (the adapter, the
heads) and names its base: the backbone's name, revision and a fingerprint of its weights, so
that ``from_pretrained`` rebuilds that base, applies the adapter, and refuses another base in one
line instead of predicting from weights the run was never trained with.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from .config import from_dict
from .errors import LucidError

ADAPTER_METHODS = ("lora",)


@dataclass
class AdapterConfig:
    """``model.adapter``: a LoRA adapter on the backbone (Hu et al. 2021, through PEFT).
    ``target_modules``: PEFT's ``all-linear`` (every linear layer of the backbone, for any
    architecture: BERT's query/key/value/dense, Llama's q/k/v/o and gate/up/down projections,
    Phi-3's fused qkv and gate_up) or a list of module names."""

    method: str = "lora"
    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"

    def __post_init__(self):
        if self.method not in ADAPTER_METHODS:
            raise LucidError(f"model.adapter.method: expected one of {list(ADAPTER_METHODS)}, found {self.method!r}")
        if not isinstance(self.r, int) or self.r < 1:
            raise LucidError(f"model.adapter.r: expected an integer >= 1, found {self.r!r}")
        if not 0 <= self.dropout < 1:
            raise LucidError(f"model.adapter.dropout: expected a number in [0, 1), found {self.dropout!r}")


def adapter_config(value) -> AdapterConfig | None:
    """``model.adapter`` as given in a config (a mapping) or saved (``asdict``)."""
    if value is None or isinstance(value, AdapterConfig):
        return value
    return from_dict(AdapterConfig, value, "model.adapter")


def with_adapter(backbone: nn.Module, adapter: AdapterConfig) -> nn.Module:
    """The backbone with a fresh LoRA adapter; only the adapter's weights train. The adapter's
    weights stay float32 on a bf16 base (PEFT's ``autocast_adapter_dtype``)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=adapter.target_modules,
        bias="none",
    )
    try:
        with warnings.catch_warnings():  # PEFT asks transformers a deprecated question about checkpointing
            warnings.simplefilter("ignore", FutureWarning)
            return get_peft_model(backbone, config)
    except ValueError as e:  # e.g. target modules that the architecture does not have
        raise LucidError(f"model.adapter: {(str(e).splitlines() or ['cannot apply it'])[0]}") from None


def frozen(backbone: nn.Module) -> nn.Module:
    for p in backbone.parameters():
        p.requires_grad_(False)
    return backbone


def base_model(backbone: nn.Module) -> nn.Module:
    """The pretrained model under an adapter (itself without one)."""
    from peft import PeftModel

    return backbone.get_base_model() if isinstance(backbone, PeftModel) else backbone


def is_adapter_key(key: str) -> bool:
    """A state-dict key of the adapter's own weights (PEFT names them ``lora_*``)."""
    return ".lora_" in key


def fingerprint(backbone: nn.Module, sample: int = 4096) -> str:
    """A fingerprint of the base weights as loaded: every tensor's name, shape and dtype, and its
    first and last ``sample`` values (cheap on 8B parameters; any real change of checkpoint,
    revision or dtype changes it)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(base_model(backbone).state_dict().items()):
        if is_adapter_key(name):
            continue
        flat = tensor.detach().reshape(-1)
        ends = torch.cat([flat[:sample], flat[-sample:]]).cpu()
        digest.update(f"{name.replace('.base_layer', '')}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        digest.update(ends.view(torch.uint8).numpy().tobytes() if ends.dtype != torch.bool else ends.numpy().tobytes())
    return digest.hexdigest()


@dataclass
class BaseRecord:
    """The base a run's adapter (or heads) were trained on."""

    name: str
    revision: str | None
    fingerprint: str

    @classmethod
    def of(cls, backbone: nn.Module, name: str) -> BaseRecord:
        return cls(
            name=name,
            revision=getattr(base_model(backbone).config, "_commit_hash", None),
            fingerprint=fingerprint(backbone),
        )

    def check(self, loaded: BaseRecord, where: str) -> None:
        """Refuse a loaded base (``BaseRecord.of`` it) that is not this one."""
        found = loaded.fingerprint
        if found != self.fingerprint:
            raise LucidError(
                f"{where}: the base backbone {self.name!r} loaded here is not the one this run was trained on "
                f"(fingerprint {found[:12]}, the run's {self.fingerprint[:12]}); load it with the same "
                "checkpoint, revision and model.dtype, or export the run merged (lucidlm export RUN --merge)"
            )
