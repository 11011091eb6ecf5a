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


def concept_loss(concept_logits, concepts: torch.Tensor) -> torch.Tensor:
    """Σ_k CE(c_k) over the rows that have a gold value for concept k."""
    total = concept_logits[0].new_zeros(())
    for k, logits in enumerate(concept_logits):
        if (concepts[:, k] != MISSING).any():
            total = total + F.cross_entropy(logits, concepts[:, k], ignore_index=MISSING)
    return total
