"""Typed outputs: tensors from a forward pass, and JSON-able predictions for people and programs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch


@dataclass
class ModelOutput:
    """A forward pass. ``concept_logits`` holds one ``[B, n_values_k]`` tensor per concept (empty
    for models without concepts); ``pooled`` is the backbone's pooled vector ``[B, H]``;
    ``concept_states`` what the concept layer computed of each concept, from which the label can
    be recomputed with concepts set to values (``models.concept_layers``)."""

    label_logits: torch.Tensor
    concept_logits: tuple[torch.Tensor, ...] = ()
    pooled: torch.Tensor | None = None
    concept_states: tuple[torch.Tensor, ...] = ()
    # Of user texts (``forward_texts``): ``[B]`` tokens the model read, and each text's length.
    tokens_read: torch.Tensor | None = None
    tokens_total: torch.Tensor | None = None

    def row(self, i: int) -> ModelOutput:
        """Row ``i`` as a batch of one (SparseCBM's ``pooled`` is ``[K, B, H]``: its batch axis is -2)."""
        one = slice(i, i + 1)
        return ModelOutput(
            self.label_logits[one],
            tuple(x[one] for x in self.concept_logits),
            None if self.pooled is None else self.pooled[..., one, :],
            tuple(x[one] for x in self.concept_states),
            *(None if x is None else x[one] for x in (self.tokens_read, self.tokens_total)),
        )


@dataclass
class ConceptPrediction:
    value: str
    probabilities: dict[str, float]


@dataclass
class Prediction:
    text: str
    label: str | float
    probabilities: dict[str, float] = field(default_factory=dict)  # empty for regression
    concepts: dict[str, ConceptPrediction] = field(default_factory=dict)
    # How much of the text the model read: its first ``tokens_read`` of ``tokens_total`` tokens
    # (the model's ``max_length``, as in training and ``evaluate``); ``truncated`` if not all.
    tokens_read: int | None = None
    tokens_total: int | None = None
    truncated: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InterventionResult:
    """The same input before and after the user set some concepts to given values."""

    text: str
    interventions: dict[str, str]
    before: Prediction
    after: Prediction
    label_changed: bool = field(init=False, default=False)

    def __post_init__(self):
        self.label_changed = self.before.label != self.after.label

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SubnetworkInterventionResult(InterventionResult):
    """A concept's subnetwork rewired for this input (docs/methods.md §2): ``fraction`` of its active
    weights dropped and as many regrown in every masked layer, chosen by ``score``; ``committed``
    if kept."""

    concept: str = ""
    fraction: float = 0.0
    score: str = "saliency"
    weights_changed: int = 0
    committed: bool = False
