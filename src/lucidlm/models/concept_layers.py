"""Concept layers: what sits between the backbone's pooled vector and the label head of a concept
model. A layer turns each concept's features into its logits, says what the label head reads of
each concept, and what it reads when a person sets a concept to a value (an intervention).

Registered by name (``concept_layer`` in a model config); adding one is one class here.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..data import TaskSpec
from ..intervene import overwrite_concepts
from ..registry import Registry

CONCEPT_LAYERS: Registry = Registry("concept_layer")
ACTIVATIONS = ("logits", "probs")


@CONCEPT_LAYERS.register("scalar")
class ScalarConceptLayer(nn.Module):
    """One linear head per concept (METHODS §1); the label head reads each concept's logits (or,
    with ``concept_activation: probs``, its probabilities).

    An intervention sets concept k to value v by forcing its logits to the mean logits of the
    training rows whose concept k is v and predicted v: a typical, correctly recognised v, which
    the label head knows how to read (``calibrate``). (The 5th/95th-percentile rule of Koh et al.
    2020, made for binary concepts, gives extreme vectors that a softmax concept never shows.)
    With probabilities, an intervention is one-hot.
    """

    def __init__(self, spec: TaskSpec, hidden_size: int, config):
        super().__init__()
        self.spec, self.activation = spec, config.concept_activation
        self.heads = nn.ModuleList(nn.Linear(hidden_size, len(c.values)) for c in spec.concepts)
        # Row v of table k: the activation that sets concept k to value v.
        width = max(len(c.values) for c in spec.concepts)
        table = torch.zeros(len(spec.concepts), width, width)
        for k, c in enumerate(spec.concepts):
            eye = torch.eye(len(c.values))
            table[k, :len(c.values), :len(c.values)] = eye if self.activation == "probs" else 5.0 * (2 * eye - 1)
        self.register_buffer("intervention_table", table)

    @property
    def width(self) -> int:
        """The size of what the label head reads."""
        return sum(len(c.values) for c in self.spec.concepts)

    def concept_logits(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``features[k]``: ``[B, H]``, what concept k reads (the same pooled vector for every concept
        of a bottleneck; concept k's subnetwork output for SparseCBM)."""
        return tuple(head(f) for head, f in zip(self.heads, features))

    def activations(self, concept_logits) -> list[torch.Tensor]:
        if self.activation == "probs":
            return [logits.softmax(-1) for logits in concept_logits]
        return list(concept_logits)

    def set_values(self, activations: list[torch.Tensor], values: torch.Tensor) -> list[torch.Tensor]:
        """Activations with concept k set to ``values[:, k]`` where that is not ``MISSING``."""
        tables = [self.intervention_table[k, :len(c.values), :len(c.values)] for k, c in enumerate(self.spec.concepts)]
        return overwrite_concepts(activations, values, tables)

    @torch.no_grad()
    def calibrate(self, concept_logits: list[torch.Tensor], gold: torch.Tensor, momentum: float = 0.0) -> None:
        """Forced logits of value v := mean of ``concept_logits`` over rows whose gold and
        predicted value are v (training data). ``momentum`` > 0 moves them only part of the way
        (the running estimate used while training); a value with no such row keeps its vector."""
        if self.activation == "probs":
            return
        for k, logits in enumerate(concept_logits):
            logits = logits.detach().float()
            recognised = gold[:, k].to(logits.device) == logits.argmax(-1)
            for v in range(logits.shape[1]):
                rows = recognised & (logits.argmax(-1) == v)
                if rows.any():
                    current = self.intervention_table[k, v, :logits.shape[1]]
                    current.copy_(momentum * current + (1 - momentum) * logits[rows].mean(0).to(current))
