"""Subnetwork-level explanation (docs/methods.md §2): how the K concept masks overlap and differ.

- density of every concept's mask, per layer and overall;
- pairwise Jaccard overlap of the masks (all masked weights together);
- the weights kept by every concept (shared) and by exactly one (owned);
- responsibility of attention heads and feed-forward neurons: the share of a head's or a
  neuron's weights that a concept keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..masking import MaskedLinear, is_attention

QKV = ("query", "key", "value", "c_attn", "q_proj", "k_proj", "v_proj", "qkv")
FFN_IN = ("intermediate", "c_fc", "fc1", "up_proj", "gate_proj", "lin1", "wi")


def _role(name: str) -> str:
    leaf = name.split(".")[-1]
    if is_attention(name):
        return "qkv" if leaf in QKV or any(q in name for q in ("self.query", "self.key", "self.value")) else "attn_out"
    return "ffn_in" if any(f in name for f in FFN_IN) else "ffn_out"


def _out_in(layer: MaskedLinear) -> torch.Tensor:
    """Masks as ``[K, out, in]`` whatever the layer's storage layout."""
    return layer.mask.transpose(1, 2) if layer.transposed else layer.mask


@dataclass(frozen=True)
class AttentionShape:
    """How a backbone's attention projections lay out heads: query heads, key/value heads
    (fewer under grouped-query attention) and each head's width."""

    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> AttentionShape:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(heads, kv_heads, head_dim)

    def per_query_head(self, share: torch.Tensor) -> torch.Tensor:
        """``[K, out]`` kept shares of a projection's output features as ``[K, heads]``: a
        query, key or value projection, or a fused one (GPT-2's c_attn, Phi-3's qkv_proj); a
        key/value head counts for each query head that reads it."""
        k, out = share.shape
        per_head = share.reshape(k, out // self.head_dim, self.head_dim).mean(-1)
        n = per_head.shape[1]
        if n == self.heads:
            segments = [per_head]
        elif n == self.kv_heads:
            segments = [per_head]
        elif n == self.heads + 2 * self.kv_heads:
            segments = list(per_head.split([self.heads, self.kv_heads, self.kv_heads], dim=1))
        else:
            raise ValueError(f"{out} output features are not query, key/value or fused qkv heads of {self}")
        return torch.stack([s.repeat_interleave(self.heads // s.shape[1], dim=1) for s in segments]).mean(0)


def subnetwork_statistics(
    layers: dict[str, MaskedLinear], concept_names: list[str], attention: AttentionShape, top_neurons: int = 10
) -> dict:
    num = len(concept_names)
    kept = torch.zeros(num, dtype=torch.float64)
    total, shared, intersections, unions = 0, 0, torch.zeros(num, num), torch.zeros(num, num)
    owned = torch.zeros(num, dtype=torch.float64)
    per_layer, heads, neurons = {}, {}, {}
    for name, layer in layers.items():
        masks = layer.mask.reshape(num, -1)
        count = masks.sum(0)
        per_layer[name] = masks.float().mean(1).tolist()
        kept += masks.sum(1).double()
        total += masks.shape[1]
        shared += int((count == num).sum())
        for k in range(num):
            owned[k] += int((masks[k] & (count == 1)).sum())
        m = masks.float()
        intersections += m @ m.T
        unions += masks.sum(1, keepdim=True).float() + masks.sum(1).float() - m @ m.T
        _responsibility(name, _out_in(layer), attention, heads, neurons)
    jaccard = (intersections / unions.clamp_min(1)).tolist()
    return {
        "concepts": concept_names,
        "density": dict(zip(concept_names, (kept / total).tolist())),
        "density_per_layer": per_layer,
        "jaccard": jaccard,
        "shared_by_all": shared / total,
        "owned_by_one": dict(zip(concept_names, (owned / total).tolist())),
        "head_responsibility": {block: torch.stack(v).mean(0).tolist() for block, v in heads.items()},
        "top_neurons": {
            block: _top_neurons(_neuron_shares(v), concept_names, top_neurons) for block, v in neurons.items()
        },
    }


def _responsibility(name: str, masks: torch.Tensor, attention: AttentionShape, heads: dict, neurons: dict) -> None:
    """Accumulate per-head (``[K, heads]``) and per-neuron (``[K, neurons]``) kept shares of a block."""
    block = name.split(".")
    block = ".".join(block[: next(i for i, part in enumerate(block) if part.isdigit()) + 1])
    role = _role(name)
    k, out, inp = masks.shape
    if role == "qkv":  # output features: heads × head_dim of q, k, v or all three
        heads.setdefault(block, []).append(attention.per_query_head(masks.float().mean(2)))
    elif role == "attn_out":  # input features are heads × head_dim
        heads.setdefault(block, []).append(masks.float().mean(1).reshape(k, attention.heads, -1).mean(-1))
    elif role == "ffn_in":  # output features are neurons
        neurons.setdefault(block, []).append(masks.float().mean(2))
    else:  # input features are neurons
        neurons.setdefault(block, []).append(masks.float().mean(1))


def _neuron_shares(per_layer: list[torch.Tensor]) -> torch.Tensor:
    """A block's per-neuron shares, its layers averaged; a fused gate/up projection (Phi-3's
    gate_up_proj: twice as many output features as neurons) counts both halves of a neuron."""
    width = min(v.shape[1] for v in per_layer)
    folded = [v.reshape(v.shape[0], 2, width).mean(1) if v.shape[1] == 2 * width else v for v in per_layer]
    return torch.stack(folded).mean(0)


def _top_neurons(share: torch.Tensor, concept_names: list[str], top: int) -> dict:
    """Each concept's ``top`` neurons by kept share, and how many it keeps over half of."""
    return {
        name: {
            "most_kept": torch.topk(share[k], min(top, share.shape[1])).indices.tolist(),
            "kept_over_half": int((share[k] > 0.5).sum()),
        }
        for k, name in enumerate(concept_names)
    }
