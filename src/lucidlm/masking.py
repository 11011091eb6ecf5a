"""Per-concept binary masks over a backbone's linear layers (docs/methods.md §2).

Each selected ``nn.Linear`` (or GPT-2 ``Conv1D``) becomes a ``MaskedLinear`` that keeps the
original weight and bias and adds K boolean masks, one per concept. A *route* says which
subnetwork a forward pass uses:

- ``None``: the dense backbone;
- ``k``: concept k's subnetwork, weights W ⊙ M_k;
- ``"all"``: all K subnetworks in one batched pass. The batch is the input repeated K times,
  concept-major (rows ``k*B .. (k+1)*B-1`` belong to concept k), and each layer multiplies
  group k by W ⊙ M_k with one batched matmul. Everything between the linear layers (attention
  scores, LayerNorm, activations) is per row, so this equals K separate passes.

Neuron-level masks (``UnitGroup``) keep whole *units* (attention heads, feed-forward neurons)
or none: the layers that make a unit keep or drop its rows (its output features), the layer
that reads it its columns. In the batched pass each such layer then gathers only the units
concept k keeps, so each subnetwork is a smaller dense network: at sparsity s the K passes
cost about K·(1 − s) of one dense pass instead of K.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from .errors import LucidError
from .registry import Registry

LAYER_CHOICES = ("all", "ffn", "attention", "top:N")


class MaskedLinear(nn.Module):
    def __init__(self, layer: nn.Module, num_masks: int):
        super().__init__()
        self.transposed = isinstance(layer, Conv1D)  # Conv1D stores its weight as [in, out]
        self.weight, self.bias = layer.weight, layer.bias
        self.in_features, self.out_features = self.weight.shape if self.transposed else self.weight.shape[::-1]
        # Masks live in the weight's own layout; they are saved bit-packed, not in the state dict.
        self.register_buffer("mask", torch.ones(num_masks, *self.weight.shape, dtype=torch.bool), persistent=False)
        self.route: int | str | None = None
        self.record_grads = False  # keep the per-concept masked weights' gradients (pruning scores)
        self.masked_weight: torch.Tensor | None = None
        self.mask_override: torch.Tensor | None = None  # set only by ``differentiable_masks``
        self._inference_weights: tuple | None = None  # (versions, what inference multiplies by)
        self._unit_layout: tuple | None = None  # (mask versions, kept features, their gathered mask)
        # Neuron-level masks: "out" if this layer makes units (its output features), "in" if it
        # reads them (its input features); unit_size features form one unit (a head's width).
        self.unit_axis: str | None = None
        self.unit_size = 1
        self.gathered: torch.Tensor | None = None  # [K, units·size] features of the last gathered pass

    @property
    def num_masks(self) -> int:
        return self.mask.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            torch.is_grad_enabled()
        ):  # training: the weights move, and the inference cache (K × the weights) must not stay
            self._inference_weights = None
        if self.route is None:
            return self._linear(x, self.weight)
        if self.route != "all":
            mask = self.mask[self.route] if self.mask_override is None else self.mask_override
            return self._linear(x, self.weight * mask)
        if self.unit_axis is not None:
            return self._forward_units(x)
        groups = x.reshape(self.num_masks, -1, x.shape[-1])
        if torch.is_grad_enabled():
            weights = self.weight.unsqueeze(0) * self.mask  # [K, *weight.shape]
            # The first pass of a step is recorded: under gradient checkpointing the backward
            # pass recomputes this forward, and the recomputed tensor is not the graph's.
            if self.record_grads and weights.requires_grad and self.masked_weight is None:
                weights.retain_grad()  # dL/d(W ⊙ M_k): concept k's loss (+ task loss) through subnetwork k
                self.masked_weight = weights
            per_concept = self.in_out(weights)
        else:
            per_concept = self._cached(self._all_masked_weights)
        if self.bias is None:
            out = torch.bmm(groups, per_concept)
        else:
            out = torch.baddbmm(self.bias.view(1, 1, -1), groups, per_concept)
        return out.reshape(*x.shape[:-1], self.out_features)

    def _cached(self, build):
        """Inference weights, kept until the weight or the masks change (their version counters
        move on every in-place update), so inference does not rebuild them every pass."""
        versions = (self.weight._version, self.mask._version, self.weight.data_ptr(), self.mask.data_ptr())
        if self._inference_weights is None or self._inference_weights[0] != versions:
            self._inference_weights = (versions, build())
        return self._inference_weights[1]

    def _all_masked_weights(self) -> torch.Tensor:
        """W ⊙ M_k for all k as ``[K, in, out]``."""
        weights = self.weight.detach().unsqueeze(0) * self.mask
        return self.in_out(weights).contiguous()

    def in_out(self, tensor: torch.Tensor) -> torch.Tensor:
        """A view of a mask-shaped ``[K, *weight.shape]`` tensor as ``[K, in, out]``."""
        return tensor if self.transposed else tensor.transpose(1, 2)

    # ---- neuron-level masks: gather the kept units ---------------------------------------------
    def kept_features(self) -> torch.Tensor:
        """``[K, n·size]`` indices of the features of the units each concept keeps, in order,
        padded to the largest count with dropped units (their masked weights are 0, so the
        padding adds nothing: a dropped unit's reader columns are zero)."""
        mask = self.in_out(self.mask)
        features = mask.any(1) if self.unit_axis == "out" else mask.any(2)  # [K, features]
        units = features.reshape(self.num_masks, -1, self.unit_size).any(-1)  # [K, units]
        count = int(units.sum(1).max())
        order = torch.sort((~units).to(torch.int8), dim=1, stable=True).indices[:, :count]  # kept first
        offsets = torch.arange(self.unit_size, device=order.device)
        return (order.unsqueeze(-1) * self.unit_size + offsets).reshape(self.num_masks, -1)

    def unit_layout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept features and the mask gathered to them (``[K, in', out']``), kept until the
        masks change: they move only when pruning or an intervention rewrites a mask, so a
        training step does not rebuild them."""
        versions = (self.mask._version, self.mask.data_ptr())
        if self._unit_layout is None or self._unit_layout[0] != versions:
            features = self.kept_features()
            mask = self.in_out(self.mask)
            k = torch.arange(self.num_masks, device=features.device).unsqueeze(-1)
            gathered = mask[k, :, features].transpose(1, 2) if self.unit_axis == "out" else mask[k, features]
            self._unit_layout = (versions, features, gathered)
        return self._unit_layout[1:]

    def _gathered_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kept features, and concept k's kept part of W ⊙ M_k as ``[K, in', out']`` for a
        batched matmul."""
        features, mask = self.unit_layout()
        weight = self.weight if self.transposed else self.weight.t()  # [in, out]
        if self.unit_axis == "out":
            return features, weight[:, features].permute(1, 0, 2) * mask
        return features, weight[features] * mask

    def _gathered_for_inference(self) -> tuple[torch.Tensor, torch.Tensor]:
        features, weights = self._gathered_weights()
        return features, weights.detach().contiguous()

    def _forward_units(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            features, weights = self._gathered_weights()
            if self.record_grads and weights.requires_grad and self.masked_weight is None:  # as above
                weights.retain_grad()
                self.masked_weight, self.gathered = weights, features
        else:
            features, weights = self._cached(self._gathered_for_inference)
        groups = x.reshape(self.num_masks, -1, weights.shape[1])
        if self.bias is None:
            out = torch.bmm(groups, weights)
        elif self.unit_axis == "out":  # each concept adds the bias of its own units
            out = torch.baddbmm(self.bias[features].unsqueeze(1), groups, weights)
        else:
            out = torch.baddbmm(self.bias.view(1, 1, -1), groups, weights)
        return out.reshape(*x.shape[:-1], weights.shape[2])

    def _linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight.t() if self.transposed else weight, self.bias)

    def concept_gradients(self) -> torch.Tensor | None:
        """``[K, *weight.shape]`` gradients of the last recorded batched pass, if any (0 for the
        units a neuron-level pass did not gather: they are pruned)."""
        if self.masked_weight is None or self.masked_weight.grad is None:
            return None
        grad = self.masked_weight.grad
        if self.unit_axis is None:
            return grad
        full = torch.zeros(self.num_masks, self.in_features, self.out_features, dtype=grad.dtype, device=grad.device)
        k = torch.arange(self.num_masks, device=grad.device).unsqueeze(-1)
        if self.unit_axis == "out":
            full[k, :, self.gathered] = grad.transpose(1, 2)
        else:
            full[k, self.gathered] = grad
        return self.in_out(full)


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
    layers = [
        (n, _block_index(n)) for n, m in backbone.named_modules() if isinstance(m, (nn.Linear, Conv1D, MaskedLinear))
    ]
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


@dataclass
class UnitGroup:
    """Layers of one block that share units: the ``makers`` produce them (attention heads from the
    query, key and value projections; neurons from the feed-forward input, or the gate and up
    projections of a gated MLP), the ``reader`` reads them (the attention output; the feed-forward
    output). A unit is kept or dropped in all of them. ``sizes``: each layer's features per unit
    (under grouped-query attention a unit is one key-value group: its query heads in the query
    projection and output, one head in the key and value projections)."""

    kind: str  # "heads" | "neurons"
    block: int
    makers: dict[str, MaskedLinear]
    reader: tuple[str, MaskedLinear]
    sizes: dict[str, int]

    @property
    def unit_size(self) -> int:
        """The reader's features per unit (a head's width; 1 for a neuron)."""
        return self.sizes[self.reader[0]]

    def _reader_mask(self) -> torch.Tensor:
        layer = self.reader[1]
        return layer.in_out(layer.mask)  # [K, in, out]: the units are slices of `in`

    @property
    def num_units(self) -> int:
        return self._reader_mask().shape[1] // self.unit_size

    @property
    def weights_per_unit(self) -> int:
        makers = sum(self.sizes[name] * layer.in_features for name, layer in self.makers.items())
        return makers + self.unit_size * self.reader[1].out_features

    def unit_masks(self) -> torch.Tensor:
        """``[K, units]``: the units each concept keeps."""
        mask = self._reader_mask()
        return mask.any(2).reshape(mask.shape[0], -1, self.unit_size).any(-1)

    def unit_sums(self, per_weight: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[K, units]``: sums of per-weight values (mask-shaped, by layer name) over each unit's
        weights in every layer of the group."""
        total = 0
        for name, layer in self.makers.items():
            values = layer.in_out(per_weight[name])  # a unit is a slice of `out`
            total = total + values.sum(1).reshape(values.shape[0], -1, self.sizes[name]).sum(-1)
        name, layer = self.reader
        values = layer.in_out(per_weight[name])  # a unit is a slice of `in`
        return total + values.sum(2).reshape(values.shape[0], -1, self.unit_size).sum(-1)

    @torch.no_grad()
    def set_units(self, k: int, keep: torch.Tensor) -> None:
        """Concept k keeps exactly the units ``keep`` (``[units]`` booleans), whole."""
        for name, layer in self.makers.items():
            mask = layer.in_out(layer.mask)[k]
            mask.copy_(keep.repeat_interleave(self.sizes[name]).unsqueeze(0).expand_as(mask))
        mask = self._reader_mask()[k]
        mask.copy_(keep.repeat_interleave(self.unit_size).unsqueeze(1).expand_as(mask))


QKV_LEAVES = ("query", "key", "value", "q_proj", "k_proj", "v_proj")  # separate projections (BERT; Llama, OPT and kin)
# Architectures whose attention reshapes the projections by the head width (``view(..., -1, head_dim)``),
# so a subnetwork's pass can carry only its kept heads; tested (tests/test_decoders.py, test_neuron_masks.py).
# OPT reshapes by the number of heads, GPT-2 and Phi-3 split fused projections at fixed offsets.
HEAD_GATHERING = ("bert", "roberta", "llama", "qwen2", "mistral", "gemma2", "gemma")


def unit_groups(backbone: nn.Module, layers: dict[str, MaskedLinear]) -> list[UnitGroup]:
    """Group the masked layers into heads and neurons, block by block, and mark them for the
    gathered batched pass. Heads need separate query, key and value projections whose attention
    reshapes by the head width (BERT; Llama, Qwen2, Mistral, Gemma-2, OPT); under grouped-query
    attention a unit is a key-value group, since each key-value head is repeated across its query
    heads. A fused projection (GPT-2's ``c_attn``, Phi-3's ``qkv_proj`` and ``gate_up_proj``) is
    split at fixed offsets by the attention or MLP code, so its units cannot be gathered: such
    layers are refused, naming the alternative."""
    config = backbone.config
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    hidden = config.hidden_size
    groups = []
    for block in sorted({_block_index(n) for n in layers}):
        names = [n for n in layers if _block_index(n) == block]
        attention = [n for n in names if is_attention(n)]
        feed_forward = [n for n in names if not is_attention(n)]
        if attention:
            makers = [n for n in attention if n.rsplit(".", 1)[-1] in QKV_LEAVES]
            readers = [n for n in attention if n not in makers]
            if config.model_type not in HEAD_GATHERING and len(makers) == 3:
                raise LucidError(
                    f"granularity 'neuron': {config.model_type}'s attention reshapes by the number of heads, so "
                    f"a subnetwork cannot carry only its kept heads (gathered on {', '.join(HEAD_GATHERING)}). "
                    "Use masked_layers: ffn for this backbone"
                )
            if len(makers) != 3 or len(readers) != 1:
                raise LucidError(
                    f"granularity 'neuron': heads need separate query, key and value projections; block {block} "
                    f"has attention layers {attention}. Use masked_layers: ffn for this backbone"
                )
            sizes = {n: layers[n].out_features // kv_heads for n in makers}
            sizes[readers[0]] = layers[readers[0]].in_features // kv_heads
            groups.append(
                UnitGroup("heads", block, {n: layers[n] for n in makers}, (readers[0], layers[readers[0]]), sizes)
            )
        if feed_forward:
            readers = [n for n in feed_forward if layers[n].out_features == hidden and layers[n].in_features != hidden]
            makers = [n for n in feed_forward if n not in readers]
            if (
                len(readers) != 1
                or not makers
                or any(layers[n].out_features != layers[readers[0]].in_features for n in makers)
            ):
                raise LucidError(
                    f"granularity 'neuron': expected feed-forward input layers (or gate and up projections) "
                    f"whose outputs the output layer reads, one feature a neuron, in block {block}; found "
                    f"{feed_forward} (a fused gate_up projection cannot be gathered). Use granularity: weight"
                )
            groups.append(
                UnitGroup(
                    "neurons",
                    block,
                    {n: layers[n] for n in makers},
                    (readers[0], layers[readers[0]]),
                    {n: 1 for n in feed_forward},
                )
            )
    for group in groups:
        for name, layer in group.makers.items():
            layer.unit_axis, layer.unit_size = "out", group.sizes[name]
        group.reader[1].unit_axis, group.reader[1].unit_size = "in", group.unit_size
    return groups


def units_to_keep(groups: list[UnitGroup], sparsity: float) -> list[int]:
    """How many units each group keeps at ``sparsity``, block by block: the coarse units (heads)
    round to the nearest count, the finest (neurons) then take the rest of the block's budget,
    so a block's weight density meets 1 − sparsity though a head is 1/12 of a layer."""
    counts = [0] * len(groups)
    for block in sorted({g.block for g in groups}):
        members = sorted(
            (i for i, g in enumerate(groups) if g.block == block), key=lambda i: -groups[i].weights_per_unit
        )
        budget = (1 - sparsity) * sum(groups[i].num_units * groups[i].weights_per_unit for i in members)
        for i in members[:-1]:
            counts[i] = round((1 - sparsity) * groups[i].num_units)
            budget -= counts[i] * groups[i].weights_per_unit
        last = groups[members[-1]]
        counts[members[-1]] = min(max(round(budget / last.weights_per_unit), 0), last.num_units)
    return counts


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


@contextmanager
def with_routes(layers: dict[str, MaskedLinear], routes: dict[str, int | str | None]):
    """Each layer on its own route inside the block (as ``routed``, one route per layer)."""
    previous = {name: layer.route for name, layer in layers.items()}
    for name, layer in layers.items():
        layer.route = routes[name]
    try:
        yield
    finally:
        for name, layer in layers.items():
            layer.route = previous[name]


@contextmanager
def differentiable_masks(layers: list[MaskedLinear], concept: int):
    """Inside the block, concept ``concept``'s masks are float tensors that take gradients
    (∂L/∂M_k, for rewiring); yields them, one a layer. The boolean masks are untouched."""
    overrides = [layer.mask[concept].float().requires_grad_() for layer in layers]
    for layer, override in zip(layers, overrides):
        layer.mask_override = override
    try:
        yield overrides
    finally:
        for layer in layers:
            layer.mask_override = None


def pack_masks(masks: torch.Tensor) -> torch.Tensor:
    """``[K, ...]`` booleans -> ``[K, ceil(n/8)]`` uint8: one bit a weight a concept."""
    flat = masks.reshape(masks.shape[0], -1).cpu().numpy()
    return torch.from_numpy(np.packbits(flat, axis=1))


def unpack_masks(packed: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    count = int(np.prod(shape[1:]))
    bits = np.unpackbits(packed.cpu().numpy(), axis=1, count=count)
    return torch.from_numpy(bits.astype(bool)).reshape(shape)


# ---- rewiring a concept's mask for one input (docs/methods.md §2) -----------------------------------
# (g = ∂L_k/∂M_k, the layer's weight W) -> [*W.shape]: which weights are worth having active
REWIRING_SCORES: Registry = Registry("score")


@REWIRING_SCORES.register("saliency")
def saliency_rewiring_score(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """s = |g ⊙ W|, the paper's."""
    return (grad * weight).abs()


@REWIRING_SCORES.register("taylor")
def taylor_rewiring_score(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """s = −g: flipping M_j changes L_k by about g_j·ΔM_j, so this drops the active weights whose
    removal lowers L_k most and regrows the pruned ones whose return lowers it most."""
    return -grad


def rewire(mask: torch.Tensor, score: torch.Tensor, fraction: float) -> torch.Tensor:
    """Drop ``fraction`` of the active entries (weights or units) with the lowest score, regrow as
    many pruned ones with the highest score."""
    flat_mask, flat_score = mask.reshape(-1), score.reshape(-1)
    n = min(round(fraction * int(flat_mask.sum())), int((~flat_mask).sum()))
    new = flat_mask.clone()
    if n > 0:
        drop = torch.topk(flat_score.masked_fill(~flat_mask, float("inf")), n, largest=False).indices
        grow = torch.topk(flat_score.masked_fill(flat_mask, -float("inf")), n).indices
        new[drop], new[grow] = False, True
    return new.reshape(mask.shape)
