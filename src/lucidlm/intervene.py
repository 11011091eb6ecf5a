"""Concept-value interventions (METHODS §1): replace predicted concepts by given values; and the
choice of a correction worth showing (the report's worked examples, ``lucidlm demo``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from .data import MISSING, TaskSpec
from .errors import LucidError
from .masking import REWIRING_SCORES
from .registry import Registry

if TYPE_CHECKING:
    from .outputs import InterventionResult


# ---- corrections: what a person tells the model, as values --------------------------------------


@dataclass(frozen=True)
class ConceptValues:
    """Set concepts to given values: ``ConceptValues({"service": "Negative"})`` (METHODS §1)."""

    values: dict[str, str]


@dataclass(frozen=True)
class SubnetworkRewiring:
    """Rewire ``concept``'s subnetwork toward ``value`` for the input (METHODS §2): ``fraction``
    of its active weights (or units) in every masked layer swapped, chosen by ``score`` (a name
    in ``masking.REWIRING_SCORES``); kept in the model only if ``commit``."""

    concept: str
    value: str
    fraction: float = 0.2
    score: str = "saliency"
    commit: bool = False

    def __post_init__(self):
        if not 0 < self.fraction < 1:
            raise LucidError(f"fraction: expected a number in (0, 1), found {self.fraction}")
        REWIRING_SCORES.check(self.score, "score")


def as_correction(correction):
    """A plain ``{"concept": "value"}`` mapping is a ``ConceptValues``; other values pass as they are."""
    return ConceptValues(dict(correction)) if isinstance(correction, dict) else correction


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


# ---- which concept to ask about (METHODS §6, intervention policies) ------------------------------
# (model, concept states [N, …] a concept, rng) -> [N, K]: each row's concepts, first to ask first
INTERVENTION_POLICIES: Registry = Registry("intervention_policy")


def random_order(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    return np.argsort(rng.random((n, k)), axis=1)


def entropy(probs: np.ndarray) -> np.ndarray:
    return -(probs * np.log(np.clip(probs, 1e-12, None))).sum(-1)


def uncertainty_order(concept_probs: list[np.ndarray]) -> np.ndarray:
    """``[N, K]`` concept indices, highest entropy first (ties: lower index first)."""
    uncertainty = np.stack([entropy(p) for p in concept_probs], axis=1)
    return np.argsort(-uncertainty, axis=1, kind="stable")


def concept_probabilities(model, states) -> list[np.ndarray]:
    return [logits.softmax(-1).detach().cpu().numpy() for logits in model.concept_logits_of(states)]


@INTERVENTION_POLICIES.register("random")
def random_policy(model, states, rng: np.random.Generator) -> np.ndarray:
    return random_order(len(states[0]), len(states), rng)


@INTERVENTION_POLICIES.register("uncertainty")
def uncertainty_policy(model, states, rng: np.random.Generator | None = None) -> np.ndarray:
    """Highest entropy of the predicted concept distribution first."""
    return uncertainty_order(concept_probabilities(model, states))


@INTERVENTION_POLICIES.register("expected_change")
def expected_change_policy(model, states, rng: np.random.Generator | None = None) -> np.ndarray:
    """The largest expected change of the label first (``expected_change_scores``)."""
    return np.argsort(-expected_change_scores(model, states).cpu().numpy(), axis=1, kind="stable")


@torch.no_grad()
def expected_change_scores(model, states) -> torch.Tensor:
    """``[N, K]``: Σ_v p_kv · TV(ŷ, ŷ[k := v]), TV the total variation distance between the label
    distributions before and after a person sets k to v, as the curves and ``intervene`` set it
    (``corrections_of``). A concept read as logits set to the value the model already predicts is
    left as it is, so that value adds nothing; a concept embedding (or probabilities) becomes
    certain, which changes the label only as far as the concept was uncertain. Either way a
    concept read with certainty is not worth asking about, however much the label reads it."""
    base = model.intervened_label_logits(states, _missing(states)).softmax(-1)
    probs = [torch.from_numpy(p).to(base.device) for p in concept_probabilities(model, states)]
    scores = torch.zeros(len(base), len(states), device=base.device)
    for k, p in enumerate(probs):
        for v in range(p.shape[1]):
            values = _missing(states)
            values[:, k] = v
            after = model.intervened_label_logits(states, values, correct_only=True).softmax(-1)
            scores[:, k] += p[:, v] * 0.5 * (after - base).abs().sum(-1)
    return scores


def _missing(states) -> torch.Tensor:
    return torch.full((len(states[0]), len(states)), MISSING, dtype=torch.long, device=states[0].device)


# ---- showing what a correction does ------------------------------------------------------------


def showcase_row(model, split, batch_size: int = 64) -> int:
    """The row of ``split`` that best shows a correction: the model misreads a concept there and
    setting the misread concepts to gold changes its label to the gold one; failing that, changes
    its label; failing that, any misread concept; failing that, the first row. Shortest text first
    among equals (it is shown to a person)."""
    inferred = model.infer(split, batch_size)
    predicted = np.stack([p.argmax(-1) for p in inferred["concept_probs"]], axis=1)
    known = split.concepts != MISSING
    misread = ((predicted != split.concepts) & known).any(1)
    before, after = inferred["label_logits"].argmax(-1), inferred["gold_concept_label_logits"].argmax(-1)
    preference = [misread & (before != after) & (after == split.labels), misread & (before != after), misread]
    for rows in preference:
        if rows.any():
            return min(np.flatnonzero(rows), key=lambda i: (len(split.texts[i]), i))
    return 0


def choose_correction(model, text: str, explanation, gold_values: dict[str, str | None]) -> tuple[str, "InterventionResult"]:
    """The misread concepts of ``text`` set to their gold values; when the model misread none, its
    most contributing concept set to the value that lowers the predicted label's probability most.
    Returns a title saying which, and the intervention's before and after."""
    corrections = {c.concept: gold_values[c.concept] for c in explanation.concepts
                   if gold_values.get(c.concept) not in (None, c.value)}
    if corrections:
        return "Correcting the concepts the model misread", model.intervene([text], ConceptValues(corrections))[0]
    top = max(explanation.concepts, key=lambda c: abs(c.contribution))
    others = [v for v in model.spec.concept(top.concept).values if v != top.value]
    results = [model.intervene([text], ConceptValues({top.concept: v}))[0] for v in others]
    result = min(results, key=lambda r: r.after.probabilities.get(r.before.label, 0.0))
    return f"No concept misread; flipping the most contributing one, {top.concept}", result
