"""Per-concept binary masks over a backbone's linear layers (METHODS §2).

Each selected ``nn.Linear`` (or GPT-2 ``Conv1D``) becomes a ``MaskedLinear`` that keeps the
original weight and bias and adds K boolean masks, one per concept. A *route* says which
subnetwork a forward pass uses:

- ``None``: the dense backbone;
- ``k``: concept k's subnetwork, weights W ⊙ M_k;
- ``"all"``: all K subnetworks in one batched pass. The batch is the input repeated K times,
  concept-major (rows ``k*B .. (k+1)*B-1`` belong to concept k), and each layer multiplies
  group k by W ⊙ M_k with one batched matmul. Everything between the linear layers (attention
  scores, LayerNorm, activations) is per row, so this equals K separate passes.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .errors import LucidError

LAYER_CHOICES = ("all", "ffn", "attention", "top:N")


class MaskedLinear(nn.Module):
    def __init__(self, layer: nn.Module, num_masks: int):
        super().__init__()
        self.transposed = isinstance(layer, Conv1D)  # Conv1D stores its weight as [in, out]
        self.weight, self.bias = layer.weight, layer.bias
        self.out_features = self.weight.shape[1] if self.transposed else self.weight.shape[0]
        # Masks live in the weight's own layout; they are saved bit-packed, not in the state dict.
        self.register_buffer("mask", torch.ones(num_masks, *self.weight.shape, dtype=torch.bool), persistent=False)
        self.route: int | str | None = None
        self.record_grads = False  # keep the per-concept masked weights' gradients (pruning scores)
        self.masked_weight: torch.Tensor | None = None
        self.mask_override: torch.Tensor | None = None  # a float mask for the routed concept (∂L/∂M_k)
        self._inference_weights: tuple[tuple, torch.Tensor] | None = None  # (versions, [K, in, out])

    @property
    def num_masks(self) -> int:
        return self.mask.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.route is None:
            return self._linear(x, self.weight)
        if self.route != "all":
            mask = self.mask[self.route] if self.mask_override is None else self.mask_override
            return self._linear(x, self.weight * mask)
        groups = x.reshape(self.num_masks, -1, x.shape[-1])
        if torch.is_grad_enabled():
            weights = self.weight.unsqueeze(0) * self.mask  # [K, *weight.shape]
            if self.record_grads and weights.requires_grad:
                weights.retain_grad()  # dL/d(W ⊙ M_k): concept k's loss (+ task loss) through subnetwork k
                self.masked_weight = weights
            per_concept = weights if self.transposed else weights.transpose(1, 2)  # [K, in, out]
        else:
            per_concept = self._cached_inference_weights()
        if self.bias is None:
            out = torch.bmm(groups, per_concept)
        else:
            out = torch.baddbmm(self.bias.view(1, 1, -1), groups, per_concept)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _cached_inference_weights(self) -> torch.Tensor:
        """W ⊙ M_k for all k as ``[K, in, out]``, kept until the weight or the masks change (their
        version counters move on every in-place update), so inference does not rebuild it."""
        versions = (self.weight._version, self.mask._version, self.weight.data_ptr(), self.mask.data_ptr())
        if self._inference_weights is None or self._inference_weights[0] != versions:
            weights = self.weight.detach().unsqueeze(0) * self.mask
            weights = weights if self.transposed else weights.transpose(1, 2)
            self._inference_weights = (versions, weights.contiguous())
        return self._inference_weights[1]

    def _linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight.t() if self.transposed else weight, self.bias)

    def concept_gradients(self) -> torch.Tensor | None:
        """``[K, *weight.shape]`` gradients of the last recorded batched pass, if any."""
        return None if self.masked_weight is None else self.masked_weight.grad


def _block_index(name: str) -> int | None:
    match = re.search(r"(?:^|\.)(\d+)\.", name)
    return int(match.group(1)) if match else None


def is_attention(name: str) -> bool:
    return "attn" in name or "attention" in name


def select_layers(backbone: nn.Module, which: str = "all") -> list[str]:
    """Names of the linear layers inside the transformer blocks that ``which`` selects:
    ``all``, ``ffn`` (feed-forward only), ``attention`` (attention projections only), or
    ``top:N`` (every linear layer of the last N blocks). Embeddings, LayerNorm, biases and
    layers outside the blocks (e.g. BERT's pooler) are never masked."""
    layers = [(n, _block_index(n)) for n, m in backbone.named_modules() if isinstance(m, (nn.Linear, Conv1D, MaskedLinear))]
    layers = [(n, b) for n, b in layers if b is not None]
    if not layers:
        raise LucidError(f"{type(backbone).__name__}: found no linear layers inside numbered transformer blocks")
    if which == "all":
        return [n for n, _ in layers]
    if which == "ffn":
        return [n for n, _ in layers if not is_attention(n)]
    if which == "attention":
        return [n for n, _ in layers if is_attention(n)]
    if which.startswith("top:") and which[4:].isdigit() and int(which[4:]) > 0:
        last = max(b for _, b in layers)
        return [n for n, b in layers if b > last - int(which[4:])]
    raise LucidError(f"masked_layers: expected one of {list(LAYER_CHOICES)}, found {which!r}")


def wrap_layers(backbone: nn.Module, names: list[str], num_masks: int) -> dict[str, MaskedLinear]:
    """Replace the named layers by ``MaskedLinear`` (same parameters, same state-dict keys)."""
    wrapped = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        layer = getattr(parent, child)
        if not isinstance(layer, MaskedLinear):
            layer = MaskedLinear(layer, num_masks)
            setattr(parent, child, layer)
        wrapped[name] = layer
    return wrapped


@contextmanager
def routed(layers: dict[str, MaskedLinear], route: int | str | None):
    """Run the backbone through subnetwork ``route`` inside the block, whatever it was before."""
    previous = {name: layer.route for name, layer in layers.items()}
    for layer in layers.values():
        layer.route = route
    try:
        yield
    finally:
        for name, layer in layers.items():
            layer.route = previous[name]


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """``[K, ...]`` booleans -> ``[K, ceil(n/8)]`` uint8: one bit a weight a concept."""
    flat = masks.reshape(masks.shape[0], -1).cpu().numpy()
    return torch.from_numpy(np.packbits(flat, axis=1))


def unpack_masks(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    count = int(np.prod(shape[1:]))
    bits = np.unpackbits(packed.cpu().numpy(), axis=1, count=count)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)
