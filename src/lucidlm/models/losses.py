"""The losses the families share, one function each."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data import MISSING


def task_loss(spec, label_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the classes, or MSE for a regression task. Rows without a label
    (``MISSING``: a person's correction that set concepts only) count for nothing; a batch of
    none of them gives 0, not the NaN of an empty mean."""
    if spec.is_regression:
        return F.mse_loss(label_logits[:, 0], labels.float())
    if (labels == MISSING).all():
        return label_logits.sum() * 0
    return F.cross_entropy(label_logits, labels, ignore_index=MISSING)


def concept_loss(concept_logits, concepts: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_k CE(c_k) over the rows that have a gold value for concept k; with ``targets`` (``[B, K]``
    p(yes) of automatic concepts), the cross-entropy to the soft distribution (1 − p, p)."""
    total = concept_logits[0].new_zeros(())
    if targets is not None:
        for k, logits in enumerate(concept_logits):
            soft = torch.stack([1 - targets[:, k], targets[:, k]], dim=-1).to(logits.dtype)
            total = total - (soft * logits.log_softmax(-1)).sum(-1).mean()
        return total
    for k, logits in enumerate(concept_logits):
        if (concepts[:, k] != MISSING).any():
            total = total + F.cross_entropy(logits, concepts[:, k], ignore_index=MISSING)
    return total


TARGETS = ("labels", "concepts", "concept_targets")  # what a loss reads of a batch


@dataclass(frozen=True)
class Mixup:
    """Concept-level mixup (C3M, Tan et al. 2024): row i of a batch mixed with row π(i) of the
    same batch in proportion μ : 1 − μ, its representation and its losses alike. Each helper
    takes ``None`` for "no mixup" and then changes nothing."""

    share: float  # μ
    partner: torch.Tensor  # π, [B]

    @staticmethod
    def draw(alpha: float, rows: int, device) -> Mixup | None:
        """μ ~ Beta(α, α) and a random pairing, from torch's seeded generator; None when α is 0."""
        if alpha <= 0:
            return None
        share = float(torch.distributions.Beta(alpha, alpha).sample())
        return Mixup(share, torch.randperm(rows).to(device))

    @staticmethod
    def apply(mix: Mixup | None, pooled: torch.Tensor) -> torch.Tensor:
        """μ·h_i + (1 − μ)·h_π(i) along the batch dimension (the one before the last)."""
        if mix is None:
            return pooled
        return mix.share * pooled + (1 - mix.share) * pooled[..., mix.partner.to(pooled.device), :]

    @staticmethod
    def agreed(mix: Mixup | None, concepts: torch.Tensor) -> torch.Tensor:
        """A mixed row's gold concept values: where both of its rows have the same, else MISSING."""
        if mix is None:
            return concepts
        other = concepts[mix.partner.to(concepts.device)]
        return torch.where(concepts == other, concepts, torch.full_like(concepts, MISSING))

    @staticmethod
    def loss(mix: Mixup | None, loss_of, batch: dict) -> torch.Tensor:
        """μ·L(the rows) + (1 − μ)·L(their partners); ``loss_of`` reads a batch's targets."""
        if mix is None:
            return loss_of(batch)
        partners = {key: batch[key][mix.partner.to(batch[key].device)] for key in TARGETS if batch.get(key) is not None}
        return mix.share * loss_of(batch) + (1 - mix.share) * loss_of(partners)
