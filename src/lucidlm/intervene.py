"""Concept-value interventions (docs/methods.md §1): replace predicted concepts by given values; and the
choice of a correction worth showing (the report's worked examples, ``lucidlm demo``)."""

from __future__ import annotations

from dataclasses import dataclass, field
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
    """Set concepts to given values: ``ConceptValues({"service": "Negative"})`` (docs/methods.md §1)."""

    values: dict[str, str]


@dataclass(frozen=True)
class SubnetworkRewiring:
    """Rewire ``concept``'s subnetwork toward ``value`` for the input (docs/methods.md §2): ``fraction``
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


def overwrite_concepts(
    activations: list[torch.Tensor], values: torch.Tensor, tables: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """Set concept k of row i to row ``values[i, k]`` of ``tables[k]`` (one-hot when no table is
    given) unless the value is ``MISSING``."""
    out = []
    for k, activation in enumerate(activations):
        value = values[:, k].to(activation.device)
        size = activation.size(-1)
        table = torch.eye(size, dtype=activation.dtype, device=activation.device) if tables is None else tables[k]
        out.append(torch.where((value == MISSING).unsqueeze(-1), activation, table[value.clamp(min=0)]))
    return out


# ---- which concept to ask about (docs/methods.md §6, intervention policies) ------------------------------
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
    """Each concept's probabilities (calibrated: ``LucidModel.concept_probabilities``)."""
    return [p.detach().cpu().numpy() for p in model.concept_probabilities(model.concept_logits_of(states))]


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


@INTERVENTION_POLICIES.register("label_change")
def label_change_policy(model, states, rng: np.random.Generator | None = None) -> np.ndarray:
    """The concept whose correction is most likely to change the decision first
    (``label_change_scores``); among equals, the larger expected change (``expected_change``)."""
    return _label_change_order(label_change_scores(model, states), expected_change_scores(model, states).cpu().numpy())


def _label_change_order(flips: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return (
        np.stack([np.lexsort((-expected[i], -flips[i])) for i in range(len(flips))])
        if len(flips)
        else flips.astype(int)
    )


@torch.no_grad()
def label_change_scores(model, states) -> np.ndarray:
    """``[N, K]``: the probability, under the model's own (calibrated) concept probabilities, that
    correcting concept k changes the decision, Σ_{v ≠ v̂_k} p_kv · [label(k := v) ≠ label]. A
    confirmation is not a correction: the value read counts for nothing, however it moves the
    probabilities."""
    decided = model.intervened_label_logits(states, _missing(states)).argmax(-1)
    probs = concept_probabilities(model, states)
    scores = np.zeros((len(decided), len(states)))
    for k, p in enumerate(probs):
        read = p.argmax(-1)
        for v in range(p.shape[1]):
            values = _missing(states)
            values[:, k] = v
            changed = (
                (model.intervened_label_logits(states, values, correct_only=False).argmax(-1) != decided).cpu().numpy()
            )
            scores[:, k] += p[:, v] * (changed & (read != v))
    return scores


@dataclass(frozen=True)
class Suggestion:
    """What to ask a person about first, for one text (``suggest_corrections``): ``concept``, the
    one whose correction is most likely to change the decision, with that probability under the
    model's own concept probabilities (0: no single correction changes it). When none does, ``pair``
    is the most probable pair of corrections that does ({concept: value}, with the label it gives),
    or None when no pair does either."""

    concept: str
    change_probability: float
    pair: dict[str, str] | None = None
    pair_label: str | None = None
    order: list[str] = field(default_factory=list)  # every concept, in ``label_change``'s order (``concept`` first)

    @property
    def single_correction_changes_label(self) -> bool:
        return self.change_probability > 0


@torch.no_grad()
def suggest_corrections(model, states) -> list[Suggestion]:
    """One ``Suggestion`` per row of ``states`` (a batch's concept states): the first concept of
    ``label_change``'s order; where no single correction changes the label, the pair of corrections
    (two concepts, each set to a value it is not read as) that changes it with the largest product
    of the two values' probabilities."""
    flips = label_change_scores(model, states)
    order = _label_change_order(flips, expected_change_scores(model, states).cpu().numpy())
    probs = concept_probabilities(model, states)
    read = [p.argmax(-1) for p in probs]
    decided = model.intervened_label_logits(states, _missing(states)).argmax(-1)
    concepts = model.spec.concepts
    out = []
    for i in range(len(order)):
        first = int(order[i, 0])
        pair, pair_label = None, None
        if flips[i, first] == 0:
            row = [s[i : i + 1] for s in states]
            candidates = sorted(
                (
                    (probs[a][i, u] * probs[b][i, w], a, u, b, w)
                    for a in range(len(concepts))
                    for b in range(a + 1, len(concepts))
                    for u in range(len(concepts[a].values))
                    for w in range(len(concepts[b].values))
                    if u != read[a][i] and w != read[b][i]
                ),
                reverse=True,
            )
            for _, a, u, b, w in candidates:
                values = _missing(row)
                values[0, a], values[0, b] = u, w
                label = int(model.intervened_label_logits(row, values, correct_only=False).argmax(-1)[0])
                if label != int(decided[i]):
                    pair = {concepts[a].name: concepts[a].values[u], concepts[b].name: concepts[b].values[w]}
                    pair_label = model.spec.classes[label]
                    break
        out.append(
            Suggestion(
                concepts[first].name, float(flips[i, first]), pair, pair_label, [concepts[k].name for k in order[i]]
            )
        )
    return out


@INTERVENTION_POLICIES.register("learned")
def learned_policy(
    model, states, rng: np.random.Generator | None = None, gold: torch.Tensor | None = None
) -> np.ndarray:
    """The policy network that ``intervention_objective: published`` trains (IntCEM, docs/methods.md §7.1),
    rolled out greedily; ``gold`` (``[N, K]``): the values a person gives for the concepts asked, which
    it reads as it asks (without: it reads each asked concept at its predicted value). A model
    without one: an error that names the objective."""
    order = getattr(model, "learned_intervention_order", None)
    if order is None:
        raise LucidError(
            f"intervention policy 'learned': a {model.family} model has none; a concept bottleneck "
            "trained with intervention_objective: published learns one"
        )
    return order(states, gold)


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


@dataclass(frozen=True)
class Showcase:
    """A row worth showing a person, and the correction to show on it: ``concept`` set to its gold
    ``value`` (None: the model misreads nothing there that moves its label)."""

    row: int
    concept: str | None = None
    value: str | None = None


def showcase_corrections(model, split, count: int = 1, batch_size: int = 64) -> list[Showcase]:
    """Up to ``count`` rows of ``split`` that show what a correction is for, best first: the concept
    the model would ask about first (``label_change``, the page's next question) is misread, and setting
    it alone to its gold value moves the label to the gold one. Among those, first rows a person
    can check (``Annotations.unanimous``: an unedited review whose annotators agreed on that
    concept and on the label); then the others; then rows where the policy's first misread
    concept is corrected whatever it does; then any rows. Shortest text first among equals."""
    inferred = model.infer(split, batch_size)
    states = [torch.from_numpy(s).to(model.device) for s in inferred["concept_states"]]
    n, k_count = split.concepts.shape
    if n == 0:
        return []
    order = INTERVENTION_POLICIES.get("label_change")(model, states)
    predicted = np.stack([p.argmax(-1) for p in inferred["concept_probs"]], axis=1)
    misread = (predicted != split.concepts) & (split.concepts != MISSING)
    # each row's first misread concept in the policy's order, and whether the policy asks it first
    first = np.array([next((k for k in order[i] if misread[i, k]), -1) for i in range(n)])
    asked_first = first == order[:, 0]
    values = torch.full((n, k_count), MISSING, dtype=torch.long, device=model.device)
    rows = np.flatnonzero(first >= 0)
    values[rows, first[rows]] = torch.as_tensor(split.concepts[rows, first[rows]], device=model.device)
    with torch.no_grad():
        after = model.intervened_label_logits(states, values).argmax(-1).cpu().numpy()
    before = inferred["label_logits"].argmax(-1)
    fixes = (first >= 0) & asked_first & (before != split.labels) & (after == split.labels)
    checkable = np.array(
        [fixes[i] and split.annotations is not None and split.annotations.unanimous(i, first[i]) for i in range(n)],
        dtype=bool,
    )
    chosen: list[int] = []
    for tier in (checkable, fixes, first >= 0, np.ones(n, dtype=bool)):
        for i in sorted(np.flatnonzero(tier), key=lambda i: (len(split.texts[i]), i)):
            if len(chosen) < count and i not in chosen:
                chosen.append(int(i))
    out = []
    for i in chosen:
        if first[i] < 0:
            out.append(Showcase(i))
        else:
            concept = model.spec.concepts[first[i]]
            out.append(Showcase(i, concept.name, concept.values[int(split.concepts[i, first[i]])]))
    return out


def choose_correction(
    model, text: str, explanation, gold_values: dict[str, str | None], showcase: Showcase | None = None
) -> tuple[str, InterventionResult]:
    """The correction to show on ``text``: the showcase's concept set to its gold value (the one the
    model would ask about first); without one, the misread concepts set to their gold values;
    when the model misread none, its most contributing concept set to the value that lowers the
    predicted label's probability most. Returns a title saying which, and the before and after."""
    if showcase is not None and showcase.concept is not None:
        return (
            f"Correcting the concept the model would ask about first, {showcase.concept}",
            model.intervene([text], ConceptValues({showcase.concept: showcase.value}))[0],
        )
    corrections = {
        c.concept: gold_values[c.concept]
        for c in explanation.concepts
        if gold_values.get(c.concept) not in (None, c.value)
    }
    if corrections:
        return "Correcting the concepts the model misread", model.intervene([text], ConceptValues(corrections))[0]
    top = max(explanation.concepts, key=lambda c: abs(c.contribution))
    others = [v for v in model.spec.concept(top.concept).values if v != top.value]
    results = [model.intervene([text], ConceptValues({top.concept: v}))[0] for v in others]
    result = min(results, key=lambda r: r.after.probabilities.get(r.before.label, 0.0))
    return f"No concept misread; flipping the most contributing one, {top.concept}", result
