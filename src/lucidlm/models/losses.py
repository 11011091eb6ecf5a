"""The losses the families share, one function each."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import MISSING


def task_loss(spec, label_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the classes, or MSE for a regression task."""
    if spec.is_regression:
        return F.mse_loss(label_logits[:, 0], labels.float())
    return F.cross_entropy(label_logits, labels)


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
