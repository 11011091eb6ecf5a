"""Subnetwork-level explanation (docs/methods.md §2): how the K concept masks overlap and differ.

- density of every concept's mask, per layer and overall;
- pairwise Jaccard overlap of the masks (all masked weights together);
- the weights kept by every concept (shared) and by exactly one (owned);
- responsibility of attention heads and feed-forward neurons: the share of a head's or a
  neuron's weights that a concept keeps.
"""

from __future__ import annotations

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


def subnetwork_statistics(layers: dict[str, MaskedLinear], concept_names: list[str], num_heads: int,
                          top_neurons: int = 10) -> dict:
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
        _responsibility(name, _out_in(layer), num_heads, heads, neurons)
    jaccard = (intersections / unions.clamp_min(1)).tolist()
    return {
        "concepts": concept_names,
        "density": dict(zip(concept_names, (kept / total).tolist())),
        "density_per_layer": per_layer,
        "jaccard": jaccard,
        "shared_by_all": shared / total,
        "owned_by_one": dict(zip(concept_names, (owned / total).tolist())),
        "head_responsibility": {block: torch.stack(v).mean(0).tolist() for block, v in heads.items()},
        "top_neurons": {block: _top_neurons(torch.stack(v).mean(0), concept_names, top_neurons) for block, v in neurons.items()},
    }


def _responsibility(name: str, masks: torch.Tensor, num_heads: int, heads: dict, neurons: dict) -> None:
    """Accumulate per-head (``[K, heads]``) and per-neuron (``[K, neurons]``) kept shares of a block."""
    block = name.split(".")
    block = ".".join(block[: next(i for i, part in enumerate(block) if part.isdigit()) + 1])
    role = _role(name)
    k, out, inp = masks.shape
    if role == "qkv":  # output features: (q|k|v, or one of them) × heads × head_dim; inp = hidden size
        share = masks.float().mean(2).reshape(k, out // inp, num_heads, inp // num_heads).mean((1, 3))
        heads.setdefault(block, []).append(share)
    elif role == "attn_out":  # input features are heads × head_dim
        heads.setdefault(block, []).append(masks.float().mean(1).reshape(k, num_heads, -1).mean(-1))
    elif role == "ffn_in":  # output features are neurons
        neurons.setdefault(block, []).append(masks.float().mean(2))
    else:  # input features are neurons
        neurons.setdefault(block, []).append(masks.float().mean(1))


def _top_neurons(share: torch.Tensor, concept_names: list[str], top: int) -> dict:
    """Each concept's ``top`` neurons by kept share, and how many it keeps over half of."""
    return {
        name: {"most_kept": torch.topk(share[k], min(top, share.shape[1])).indices.tolist(),
               "kept_over_half": int((share[k] > 0.5).sum())}
        for k, name in enumerate(concept_names)
    }
