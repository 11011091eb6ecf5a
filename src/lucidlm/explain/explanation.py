"""The one explanation value every family returns: JSON-able, rendered by the CLI, the web page
and the HTML report alike. A family fills the parts it has and leaves the rest empty."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

import torch

from ..outputs import Prediction


@dataclass
class TokenGroup:
    """One word of the text as its writer typed it, with the tokens the model cut it into.

    ``text`` is the user's own characters (not the tokenizer's normalised ones: ``café``, not
    ``cafe``; an emoji, not ``[UNK]``), ``before`` the user's characters between the previous group
    and this one (spaces, line breaks; characters no token covers), ``score`` the sum of its tokens'
    scores (integrated gradients add up over tokens, attention weights too), ``tokens`` their
    indices in ``TokenAttribution.tokens`` and ``pair`` whether it is in the second text of a pair."""

    text: str
    before: str
    score: float
    tokens: list[int]
    pair: bool = False


@dataclass
class TokenAttribution:
    """Scores over the input's tokens toward one ``target``: a concept name, ``"label"``, or
    ``"attention"`` (proto-lm's token attention). ``method`` says how they were computed.

    How to show the tokens is decided once, here, for every view (CLI, page, report):
    ``groups`` are the text's words in the user's own characters, each with the summed score of
    its tokens (what the page and the report draw: subword pieces never show apart); ``spans`` is
    each token's characters ``[start, end)`` in the text it came from (the pair's, for a pair's
    tokens), from the tokenizer's offsets (None for special tokens, or when the tokenizer gives no
    offsets: then the groups are built from ``words``); ``unread`` is the end of the text the model
    did not read (it reads its first ``max_length`` tokens). Per token, ``special`` marks
    [CLS]-like tokens a view leaves out, ``words`` is each token as the tokenizer has it (without
    ``##``, ``Ġ`` or ``▁``) and ``space_before`` whether a space precedes it."""

    target: str
    method: str
    tokens: list[str]
    scores: list[float]
    special: list[bool] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    space_before: list[bool] = field(default_factory=list)
    spans: list[tuple[int, int] | None] = field(default_factory=list)
    groups: list[TokenGroup] = field(default_factory=list)
    unread: str = ""


@dataclass
class ConceptContribution:
    """A concept's value, probability, and its contribution to the predicted label's logit
    (label-head weight × concept activation, summed over the concept's values), split into what
    its value carries (``from_value``: the same weights × what the label reads of the value alone,
    the concept layer's ``value_readings``) and what the text carries beside it (``from_text``,
    the rest). None where the split is unknown (a checkpoint written before value means)."""

    concept: str
    value: str
    probability: float
    contribution: float
    from_value: float | None = None
    from_text: float | None = None


def values_share(from_value: torch.Tensor, from_text: torch.Tensor) -> torch.Tensor:
    """``[B]``: how much of each decision the concept values account for, from ``[B, K]`` parts:
    Σ_k |from_value| / Σ_k (|from_value| + |from_text|), in [0, 1] (1: the label reads nothing of
    the text beside the values; NaN where there is nothing to share, or no split)."""
    value_mass, text_mass = from_value.abs().sum(-1), from_text.abs().sum(-1)
    return value_mass / (value_mass + text_mass)


def concept_values_share(contributions: list[ConceptContribution]) -> float | None:
    """``values_share`` of one decision's contributions; None without a split."""
    if not contributions or any(c.from_value is None for c in contributions):
        return None
    share = float(
        values_share(
            torch.tensor([c.from_value for c in contributions]), torch.tensor([c.from_text for c in contributions])
        )
    )
    return None if math.isnan(share) else share


# What "contribution" means (``ConceptBottleneckLM.concept_contributions``), in the one line every
# view shows beside it: the CLI, the page (through /api/info) and the report.
CONTRIBUTION_MEANING = (
    "Contribution: label-head weight × concept activation (summed over the concept's values, over the "
    "label's temperature) toward the predicted label's logit, which is the sum of the contributions plus "
    "the head's bias; + pushes toward the predicted label, − away from it. Each splits into what the "
    "concept's value carries (the same weights × what the label reads of the value alone) and what the "
    "text carries beside it; the values' share is Σ|value part| / Σ(|value part| + |text part|)."
)


@dataclass
class TrainingExample:
    text: str
    distance: float
    label: str | float | None = None
    top_tokens: list[str] = field(default_factory=list)
    text_pair: str | None = None  # the second text of a sentence-pair task


@dataclass
class PrototypeMatch:
    """A learned prototype as it bears on this input (proto-lm)."""

    prototype: int
    prototype_class: str | None  # None for regression, where prototypes belong to no class
    similarity: float
    contributions: dict[str, float]  # class -> similarity × classification weight
    nearest_examples: list[TrainingExample] = field(default_factory=list)


@dataclass
class Explanation:
    text: str
    prediction: Prediction
    concepts: list[ConceptContribution] = field(default_factory=list)
    tokens: list[TokenAttribution] = field(default_factory=list)
    subnetworks: dict | None = None  # SparseCBM: densities, overlaps, shared/owned weights
    prototypes: list[PrototypeMatch] = field(default_factory=list)
    text_pair: str | None = None  # the second text of a sentence-pair task
    concept_values_share: float | None = None  # concept models: ``concept_values_share(concepts)``

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)
