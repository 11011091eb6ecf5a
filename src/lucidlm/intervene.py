"""Concept-value interventions (METHODS §1): replace predicted concepts by given values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import MISSING, TaskSpec


def concept_values_tensor(spec: TaskSpec, interventions: dict[str, str], batch_size: int) -> torch.Tensor:
    """``{"service": "Negative"}`` -> ``[B, K]`` value indices, ``MISSING`` for concepts left alone.
    Unknown concept names or values raise a ``LucidError`` naming them."""
    values = torch.full((batch_size, len(spec.concepts)), MISSING, dtype=torch.long)
    names = spec.concept_names
    for name, value in interventions.items():
        concept = spec.concept(name)
        values[:, names.index(name)] = concept.index(value)
    return values


def overwrite_concepts(concept_probs: list[torch.Tensor], values: torch.Tensor) -> list[torch.Tensor]:
    """Set concept k of row i to the one-hot of ``values[i, k]`` unless that is ``MISSING``."""
    out = []
    for k, probs in enumerate(concept_probs):
        value = values[:, k].to(probs.device)
        one_hot = F.one_hot(value.clamp(min=0), probs.size(-1)).to(probs.dtype)
        out.append(torch.where((value == MISSING).unsqueeze(-1), probs, one_hot))
    return out
