"""The one explanation value every family returns: JSON-able, rendered by the CLI, the web page
and the HTML report alike. A family fills the parts it has and leaves the rest empty."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..outputs import Prediction


@dataclass
class TokenAttribution:
    """Scores over the input's tokens toward one ``target``: a concept name, ``"label"``, or
    ``"attention"`` (proto-lm's token attention). ``method`` says how they were computed.

    How to show the tokens is decided once, here, for every view (CLI, page, report):
    ``special`` marks [CLS]-like tokens a view leaves out, ``words`` is each token as shown
    (without ``##``, ``Ġ`` or ``▁``) and ``space_before`` whether a space precedes it."""

    target: str
    method: str
    tokens: list[str]
    scores: list[float]
    special: list[bool] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    space_before: list[bool] = field(default_factory=list)


@dataclass
class ConceptContribution:
    """A concept's value, probability, and its contribution to the predicted label's logit
    (label-head weight × concept activation, summed over the concept's values)."""

    concept: str
    value: str
    probability: float
    contribution: float


# What "contribution" means, in the one line every view (CLI, page, report) shows beside it.
CONTRIBUTION_MEANING = ("contribution: what the concept, as read, adds to the predicted label's score "
                        "(label-head weight × concept activation); the score is their sum plus a constant")


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

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)
