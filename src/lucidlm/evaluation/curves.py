"""Intervention curves: task accuracy as 0 … K concepts are set to their gold values.

A user who fixes concepts one at a time should see accuracy rise. For every row the concepts
are taken in an order, at random, most uncertain first (highest entropy of the concept's
predicted distribution), largest expected label change first, or most likely to change the
decision first (the page's next question) (``intervene.INTERVENTION_POLICIES``),
and the first m of them are set to gold, m = 0 … K, as ``intervene`` sets them (``corrections_of``:
a concept predicted right stays as it is for scalar logits and becomes certain, one-hot, for
concept embeddings and probabilities). At m = 0 the curve is the task accuracy; at m = K it is
the accuracy with every wrong concept corrected (``task_gold_concepts`` of ``evaluate``), or,
where a confirmed concept becomes certain, with every concept forced to gold
(``task_forced_concepts``).

The random curve is its expectation: the first m concepts of a uniformly random order are a
uniformly random set of m, so for up to ``EXACT_RANDOM_MAX_CONCEPTS`` concepts it is the mean
accuracy over every such set (2^K label-head passes, no backbone pass), with nothing drawn; with
more, the mean over several seeded random orders. (On CEBaB's 13 concepts a step of the curve,
about 0.15 points, is as small as the noise of five sampled orders, which made it seem to fall.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..data import MISSING, Split
from ..intervene import INTERVENTION_POLICIES, random_order, uncertainty_order
from .faithfulness import concept_applicability
from .outputs import TextOutputs, split_outputs

ORDERS = (
    "random",
    "uncertainty",
    "expected_change",
    "label_change",
    "learned",
)  # learned: only a model that has one (IntCEM, published)
EXACT_RANDOM_MAX_CONCEPTS = 13  # 8192 sets of concepts


def gold_values(order: np.ndarray, gold: np.ndarray, m: int) -> np.ndarray:
    """``[N, K]``: the gold value of each row's first ``m`` concepts in ``order``, ``MISSING`` elsewhere."""
    values = np.full_like(gold, MISSING)
    rows = np.arange(len(gold))[:, None]
    chosen = order[:, :m]
    values[rows, chosen] = gold[rows, chosen]
    return values


def intervention_curve(
    label_logits: Callable[[np.ndarray], np.ndarray], order: np.ndarray, gold: np.ndarray, labels: np.ndarray
) -> list[float]:
    """Accuracy for m = 0 … K concepts set to gold; ``label_logits(values)`` maps ``[N, K]`` values
    (``MISSING``: keep the prediction) to label logits ``[N, C]``."""
    return [
        float((label_logits(gold_values(order, gold, m)).argmax(-1) == labels).mean()) for m in range(gold.shape[1] + 1)
    ]


def expected_random_curve(
    label_logits_of_set: Callable[[np.ndarray], np.ndarray], k: int, labels: np.ndarray
) -> list[float]:
    """The random order's curve without sampling: for m = 0 … K, the mean accuracy over every set
    of m concepts set to gold. ``label_logits_of_set(chosen)``: the label logits ``[N, C]`` with
    the concepts where ``chosen`` (``[K]`` booleans) is true set to gold in every row."""
    sets = ((np.arange(2**k)[:, None] >> np.arange(k)) & 1).astype(bool)  # [2^K, K]: every subset
    accuracy = np.array([(label_logits_of_set(chosen).argmax(-1) == labels).mean() for chosen in sets])
    sizes = sets.sum(1)
    return [float(accuracy[sizes == m].mean()) for m in range(k + 1)]


@torch.no_grad()
def intervention_curves(model, outputs: TextOutputs, split: Split, seed: int = 0, repeats: int = 5) -> dict:
    """The curve of each policy on ``split`` (random: exact up to ``EXACT_RANDOM_MAX_CONCEPTS``
    concepts, else the mean over ``repeats`` orders per row)."""
    reason = concept_applicability(model)
    if reason:
        return {"skipped": reason}
    model.eval()
    found, states = split_outputs(model, outputs, split)

    def label_logits(values: np.ndarray) -> np.ndarray:
        return model.intervened_label_logits(states, torch.from_numpy(values).to(model.device)).cpu().numpy()

    gold, labels = split.concepts, split.labels
    exact = gold.shape[1] <= EXACT_RANDOM_MAX_CONCEPTS
    if exact:
        # setting a concept changes its own activation only: each set's label mixes two lists
        predicted = model.concept_activations(states)
        corrected = model.intervened_activations(states, torch.from_numpy(gold).to(model.device))
        random = expected_random_curve(
            lambda chosen: (
                model.label_from_concepts([c if on else p for on, c, p in zip(chosen, corrected, predicted)])
                .cpu()
                .numpy()
            ),
            gold.shape[1],
            labels,
        )
    else:
        rng = np.random.default_rng(seed)
        random = np.mean(
            [
                intervention_curve(label_logits, random_order(len(split), gold.shape[1], rng), gold, labels)
                for _ in range(repeats)
            ],
            axis=0,
        ).tolist()
    probs = [p.numpy() for p in model.concept_probabilities([torch.from_numpy(x) for x in found["concept_logits"]])]
    expected_change = INTERVENTION_POLICIES.get("expected_change")(model, states)
    learned = {}
    if model.learned_intervention_policy() is not None:  # intervention_objective: published (docs/methods.md §7.1)
        # it reads, as it asks, the gold values it has asked for, as the published evaluation feeds it
        order = INTERVENTION_POLICIES.get("learned")(model, states, gold=torch.from_numpy(gold).to(model.device))
        learned["learned"] = intervention_curve(label_logits, order, gold, labels)
    return {
        "n": len(split),
        "concepts": gold.shape[1],
        "k": list(range(gold.shape[1] + 1)),
        "random": random,
        "random_repeats": None if exact else repeats,
        "seed": seed,
        "uncertainty": intervention_curve(label_logits, uncertainty_order(probs), gold, labels),
        "expected_change": intervention_curve(label_logits, expected_change, gold, labels),
        "label_change": intervention_curve(
            label_logits, INTERVENTION_POLICIES.get("label_change")(model, states), gold, labels
        ),
        **learned,
    }
