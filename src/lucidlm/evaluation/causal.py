"""Causal concept effects on CEBaB (Abraham et al., NeurIPS 2022; docs/methods.md §4).

A CEBaB edit rewrites one aspect of an original review, so an (original, edit) pair is a
counterfactual: the aspect went from value a to b, the rest stayed. For a model N:

- ICaCE = N(edit) − N(original): the model's true effect, a vector over the label classes
  (N is the label probability distribution);
- EICaCE: an explainer's estimate of it that never sees the edit. A concept bottleneck
  estimates it by intervening on its own concept: N(original with concept a→b) − N(original)
  (as ``intervene`` does it: ``corrections_of``);
- the simple baseline estimates it, for every pair of aspect a→b, by the mean over the training
  pairs of the same aspect a→b of the *true* label distribution's change (the annotators'
  votes, normalised, ``no majority`` rows included; see ``label_distribution``). ``train_exclusive``
  holds no pairs (its edits' originals are not in it), so it reads ``train_inclusive``: every
  original behind train_exclusive's texts with all its edits, none of them in dev or test.
  A direction no training pair shows is estimated as no effect (counted).

Scores per pair, as the CEBaB benchmark's code computes them: L2 = ‖ICaCE − EICaCE‖₂, cosine
distance = 1 − cos(ICaCE, EICaCE) (1 when either vector is zero), norm difference =
| ‖ICaCE‖₂ − ‖EICaCE‖₂ |; averaged over all pairs, per aspect, and per aspect and direction
(lower is better).

Pairs follow the conventions of ``data.cebab``.

Estimators besides the model's own intervention, each computed on the same model's outputs:
the average training effect (above); CEBaB's S-learner, a logistic regression from the four
aspects' values to the model's predicted class, fitted on the training texts, whose estimate is
its prediction with the aspect set to b minus with a; and approximate counterfactuals (CEBaB's
matching baseline): the model's mean output on the training texts whose four aspect values are
the source's with the aspect set to b, minus its output on the source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import MISSING
from ..data.cebab import (  # noqa: F401
    CEBAB_ASPECTS,
    CEBAB_CLASSES,
    PROTOCOLS,
    CounterfactualPair,
    cebab_concept_rows,
    cebab_pairs,
    cebab_spec,
    label_distribution,
    load_cebab_pairs,
)
from ..errors import LucidError
from ..intervene import SubnetworkRewiring
from ..models import ConceptModel, SubnetworkModel
from .outputs import TextOutputs, softmax

DISTANCES = ("l2", "cosine", "norm_diff")


# ---- estimators and scores -----------------------------------------------------------------


def average_effect_estimator(train_pairs: list[CounterfactualPair]) -> dict[tuple[str, str, str], np.ndarray]:
    """Aspect a→b -> the mean true label effect of the training pairs that made that change."""
    groups: dict[tuple[str, str, str], list] = {}
    for pair in train_pairs:
        if pair.label_effect is None:
            raise LucidError(f"training pair {pair.edit_id}: no label effect (load it with with_label_effect=True)")
        groups.setdefault(pair.direction, []).append(pair.label_effect)
    return {direction: np.mean(effects, axis=0) for direction, effects in groups.items()}


def estimate_effects(estimator: dict, pairs: list[CounterfactualPair], num_classes: int) -> tuple[np.ndarray, int]:
    """``[P, C]`` estimates for ``pairs`` and how many fell back to zero (direction unseen)."""
    estimates = np.zeros((len(pairs), num_classes))
    unseen = 0
    for i, pair in enumerate(pairs):
        if pair.direction in estimator:
            estimates[i] = estimator[pair.direction]
        else:
            unseen += 1
    return estimates, unseen


def _with_aspect(values: tuple[str, ...], aspect: str, value: str) -> tuple[str, ...]:
    return tuple(value if a == aspect else v for a, v in zip(CEBAB_ASPECTS, values))


def _one_hot(rows: list[tuple[str, ...]]) -> np.ndarray:
    spec = cebab_spec()
    return np.array([[float(v == value) for c, v in zip(spec.concepts, row) for value in c.values] for row in rows])


def s_learner_effects(
    train_texts: list[str], train_values: list[tuple[str, ...]], outputs: TextOutputs, pairs: list[CounterfactualPair]
) -> np.ndarray:
    """CEBaB's S-learner on the model's own outputs: aspects' values -> the model's predicted class
    (a logistic regression on the training texts); estimate = its probabilities with the aspect
    set to b minus with a (the source's other values kept)."""
    from sklearn.linear_model import LogisticRegression

    predicted = outputs.get(train_texts)["label_logits"].argmax(1)
    if len(np.unique(predicted)) < 2:  # the model predicts one class everywhere: no effect to learn
        return np.zeros((len(pairs), len(CEBAB_CLASSES)))
    learner = LogisticRegression(max_iter=2000).fit(_one_hot(train_values), predicted)
    proba = lambda rows: _class_columns(learner, learner.predict_proba(_one_hot(rows)), len(CEBAB_CLASSES))  # noqa: E731
    before = proba([p.source_concepts for p in pairs])
    after = proba([_with_aspect(p.source_concepts, p.aspect, p.after) for p in pairs])
    return after - before


def _class_columns(learner, proba: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(proba), num_classes))
    out[:, learner.classes_] = proba
    return out


def matching_effects(
    train_texts: list[str], train_values: list[tuple[str, ...]], outputs: TextOutputs, pairs: list[CounterfactualPair]
) -> tuple[np.ndarray, int]:
    """Approximate counterfactuals (CEBaB's matching baseline): the model's mean label distribution
    over the training texts whose aspect values are the source's with the aspect set to b, minus
    its distribution on the source. Pairs with no such training text are estimated as no effect
    (counted)."""
    p_train = softmax(outputs.get(train_texts)["label_logits"])
    by_values: dict[tuple[str, ...], list[int]] = {}
    for i, values in enumerate(train_values):
        by_values.setdefault(values, []).append(i)
    p_source = softmax(outputs.get([p.original for p in pairs])["label_logits"])
    estimates, unmatched = np.zeros_like(p_source), 0
    for i, pair in enumerate(pairs):
        matches = by_values.get(_with_aspect(pair.source_concepts, pair.aspect, pair.after))
        if matches:
            estimates[i] = p_train[matches].mean(0) - p_source[i]
        else:
            unmatched += 1
    return estimates, unmatched


def cosine_distance(u: np.ndarray, v: np.ndarray) -> float:
    """1 − cos(u, v); 1 when either is zero, where the cosine is undefined (CEBaB's rule)."""
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    if nu == 0 or nv == 0:
        return 1.0
    return float(1.0 - (u @ v) / (nu * nv))


def effect_distances(icace: np.ndarray, eicace: np.ndarray) -> dict[str, np.ndarray]:
    """Per pair: L2, cosine distance and norm difference between true and estimated effects."""
    return {
        "l2": np.linalg.norm(icace - eicace, axis=1),
        "cosine": np.array([cosine_distance(u, v) for u, v in zip(icace, eicace)]),
        "norm_diff": np.abs(np.linalg.norm(icace, axis=1) - np.linalg.norm(eicace, axis=1)),
    }


def summarize(pairs: list[CounterfactualPair], values: dict[str, np.ndarray]) -> dict:
    """Means of per-pair ``values`` over all pairs, per aspect and per aspect a→b, with counts."""

    def mean_of(rows) -> dict:
        rows = np.asarray(rows, dtype=int)
        return {
            "n": int(len(rows)),
            **{name: float(v[rows].mean()) if len(rows) else None for name, v in values.items()},
        }

    aspects = sorted(
        {p.aspect for p in pairs}, key=lambda a: CEBAB_ASPECTS.index(a) if a in CEBAB_ASPECTS else len(CEBAB_ASPECTS)
    )
    directions = sorted({p.direction for p in pairs})
    return {
        "overall": mean_of(range(len(pairs))),
        "per_aspect": {a: mean_of([i for i, p in enumerate(pairs) if p.aspect == a]) for a in aspects},
        "per_direction": {
            f"{a}: {x}→{y}": mean_of([i for i, p in enumerate(pairs) if p.direction == (a, x, y)])
            for a, x, y in directions
        },
    }


# ---- the models ----------------------------------------------------------------------------


def causal_applicability(model, cebab: str | Path | None) -> str | None:
    if cebab is None:
        return (
            "no CEBaB data given: the causal suite reads CEBaB's (original, edit) pairs (cebab=FOLDER, --cebab FOLDER)"
        )
    if not Path(cebab).is_dir():
        return f"{cebab}: no such folder (expected CEBaB's JSON files)"
    if tuple(model.spec.classes) != CEBAB_CLASSES:
        return f"the model's labels {list(model.spec.classes)} are not CEBaB's five review classes"
    return None


@torch.no_grad()
def concept_intervention_effects(
    model, outputs: TextOutputs, pairs: list[CounterfactualPair]
) -> tuple[np.ndarray, np.ndarray]:
    """EICaCE of a concept model: its label distribution on each original with the edited
    aspect's concept set to the edit's value, minus without. Returns the estimates of the pairs
    whose aspect is one of the model's concepts, and those pairs' indices."""
    names = model.spec.concept_names
    usable = _usable(model, pairs)
    if len(usable) == 0:
        return np.zeros((0, model.spec.num_labels)), usable
    chosen = [pairs[i] for i in usable]
    found = outputs.get([p.original for p in chosen])
    states = [torch.from_numpy(x).to(model.device) for x in found["concept_states"]]
    values = torch.full((len(chosen), len(names)), MISSING, dtype=torch.long)
    for i, pair in enumerate(chosen):
        values[i, names.index(pair.aspect)] = model.spec.concept(pair.aspect).index(pair.after)
    after = model.intervened_label_logits(states, values.to(model.device)).softmax(-1).cpu().numpy()
    return after - softmax(found["label_logits"]), usable


def _usable(model, pairs: list[CounterfactualPair]) -> np.ndarray:
    """Indices of the pairs whose aspect and target value are among the model's concepts."""
    names = model.spec.concept_names
    return np.array(
        [i for i, p in enumerate(pairs) if p.aspect in names and p.after in model.spec.concept(p.aspect).values],
        dtype=int,
    )


def rewiring_effects(
    model, pairs: list[CounterfactualPair], fraction: float, score: str
) -> tuple[np.ndarray, np.ndarray]:
    """EICaCE of SparseCBM by its own correction (docs/methods.md §2): each original's label distribution
    after the edited aspect's subnetwork is rewired toward the edit's value (``fraction`` of its
    weights, chosen by ``score``), for that text only, minus before. Estimates and the usable
    pairs' indices."""
    usable = _usable(model, pairs)
    estimates = np.zeros((len(usable), model.spec.num_labels))
    for row, i in enumerate(usable):
        pair = pairs[i]
        change = SubnetworkRewiring(pair.aspect, pair.after, fraction, score, commit=False)
        result = model.intervene([pair.original], change)[0]
        estimates[row] = [result.after.probabilities[c] - result.before.probabilities[c] for c in model.spec.classes]
    return estimates, usable


def causal_effects(
    model,
    outputs: TextOutputs,
    pairs: list[CounterfactualPair],
    estimator: dict[tuple[str, str, str], np.ndarray],
    train: tuple[list, list] | None = None,
    rewiring: tuple[float, str] | None = None,
) -> dict:
    """ICaCE of ``model`` on ``pairs``, scored against the baseline ``estimator``, the S-learner
    and the matching baseline fitted on ``train`` (texts, aspect values) with the same model's
    outputs, and, for a concept model, against its own interventions (for SparseCBM given
    ``rewiring``, its fraction and score, also its subnetwork rewiring: one backward pass a pair)."""
    p_original = softmax(outputs.get([p.original for p in pairs])["label_logits"])
    p_edit = softmax(outputs.get([p.edit for p in pairs])["label_logits"])
    icace = p_edit - p_original
    baseline, unseen = estimate_effects(estimator, pairs, icace.shape[1])
    result = {
        "n_pairs": len(pairs),
        "icace_norm": summarize(pairs, {"mean": np.linalg.norm(icace, axis=1)}),
        "estimators": {
            "average_training_effect": {
                **summarize(pairs, effect_distances(icace, baseline)),
                "directions_unseen_in_training": unseen,
            }
        },
    }
    if train is not None:
        result["estimators"]["s_learner"] = summarize(
            pairs, effect_distances(icace, s_learner_effects(*train, outputs, pairs))
        )
        matched, unmatched = matching_effects(*train, outputs, pairs)
        result["estimators"]["matching"] = {
            **summarize(pairs, effect_distances(icace, matched)),
            "pairs_without_a_match": unmatched,
        }
    if isinstance(model, ConceptModel):
        eicace, usable = concept_intervention_effects(model, outputs, pairs)
        chosen = [pairs[i] for i in usable]
        result["estimators"]["concept_intervention"] = {
            **summarize(chosen, effect_distances(icace[usable], eicace)),
            "pairs_without_the_concept": len(pairs) - len(usable),
        }
    else:
        result["estimators"]["concept_intervention"] = {
            "skipped": f"a {model.family} model without concepts has no concept to intervene on"
        }
    if isinstance(model, SubnetworkModel) and rewiring is not None:
        eicace, usable = rewiring_effects(model, pairs, *rewiring)
        result["estimators"]["subnetwork_rewiring"] = {
            **summarize([pairs[i] for i in usable], effect_distances(icace[usable], eicace)),
            "fraction": rewiring[0],
            "score": rewiring[1],
        }
    return result
