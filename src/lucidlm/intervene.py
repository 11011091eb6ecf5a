"""Concept-value interventions (METHODS §1): replace predicted concepts by given values."""

from __future__ import annotations

import torch

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


def overwrite_concepts(activations: list[torch.Tensor], values: torch.Tensor,
                       tables: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Set concept k of row i to row ``values[i, k]`` of ``tables[k]`` (one-hot when no table is
    given) unless the value is ``MISSING``."""
    out = []
    for k, activation in enumerate(activations):
        value = values[:, k].to(activation.device)
        size = activation.size(-1)
        table = torch.eye(size, dtype=activation.dtype, device=activation.device) if tables is None else tables[k]
        out.append(torch.where((value == MISSING).unsqueeze(-1), activation, table[value.clamp(min=0)]))
    return out
