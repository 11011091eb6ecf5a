"""Is the bottleneck honest? How much of the label the concept values carry, and what each
correction buys, so that leakage (a label that reads more than the concepts) is visible.

- Completeness (Yeh et al., NeurIPS 2020; docs/methods.md §6): η = (a_c − a_r) / (a_b − a_r), a_c the
  accuracy of the best label predictor from the concept values alone, a_b the black box's
  accuracy (given, or this model's own when none is), a_r chance (the training split's majority
  class): a property of the concept set. "Best" is chosen on dev among ``CONCEPT_PREDICTORS``
  (logistic regressions of five strengths and gradient-boosted trees, which read interactions
  of concepts), each fit on the one-hot gold concept values of the training split; the chosen
  one is scored on the gold values of the evaluated split. (An untuned logistic regression
  understated a_c: 53.1% on the 13 CEBaB concepts against 54.5% with C chosen on dev.)
- Yeh et al. define η on a model's own concept scores: the same regression read on the values
  this model predicts (where the row has a gold value) gives the model's own a_c and η. The
  regression is fit on gold training values, which a trained model reads almost without error
  (CEBaB: 0.4-1.0% wrong). The model's accuracy above its own a_c is what its label reads beyond
  the concept values it passes on: leakage, or concept embeddings doing their work.
- The model's accuracy with every concept forced to gold next to predicted: what is left of its
  label once the concepts carry nothing but their values.
- Per concept: the change in accuracy when that concept alone is set to gold, as ``intervene``
  sets it (``corrections_of``).
- How much the concept values carry of the decisions: each concept's contribution to the
  predicted label's logit splits into what its value carries and what the text carries beside it
  (``value_and_text_contributions``); the mean over the split of the values' share of each
  decision (``explain.values_share``), and the share of decisions the values alone (every concept
  read as its value, nothing of the text) make the same.
- Responsiveness: on the rows with at least one concept the model misreads (gold known, predicted
  value another), the share whose label changes when exactly those concepts are set to gold, and
  of the changed labels the shares changed to the gold label and away from it (the label was
  gold before). What a person who corrects the model sees: a gain in accuracy can hide a label
  that rarely moves, or moves as often away from gold as to it.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from ..data import MISSING, Split
from ..explain.explanation import values_share
from .faithfulness import concept_applicability
from .outputs import TextOutputs, split_outputs


def one_hot_concepts(concepts: np.ndarray, sizes: list[int]) -> np.ndarray:
    """``[N, Σ V_k]``: each concept's gold value one-hot; all zeros where it has none."""
    out = np.zeros((len(concepts), sum(sizes)))
    offset = 0
    for k, size in enumerate(sizes):
        known = concepts[:, k] != MISSING
        out[np.flatnonzero(known), offset + concepts[known, k]] = 1.0
        offset += size
    return out


# The concept → label predictors completeness chooses among, by name (on dev accuracy; ties: first).
CONCEPT_PREDICTORS = {
    **{
        f"logistic regression C={c:g}": (lambda c=c: LogisticRegression(C=c, max_iter=5000))
        for c in (0.01, 0.1, 1, 10, 100)
    },
    "gradient-boosted trees": lambda: HistGradientBoostingClassifier(random_state=0),
}


def best_concept_predictor(train: Split, dev: Split | None, sizes: list[int]):
    """The predictor of ``CONCEPT_PREDICTORS`` with the best accuracy from dev's gold concept
    values, fit on the training split's; without dev, the plain logistic regression (C = 1).
    Returns (name, fitted predictor, {name: dev accuracy})."""
    x_train = one_hot_concepts(train.concepts, sizes)
    candidates = (
        CONCEPT_PREDICTORS
        if dev is not None
        else {"logistic regression C=1": CONCEPT_PREDICTORS["logistic regression C=1"]}
    )
    fitted, scores = {}, {}
    for name, make in candidates.items():
        fitted[name] = make().fit(x_train, train.labels)
        if dev is not None:
            scores[name] = float((fitted[name].predict(one_hot_concepts(dev.concepts, sizes)) == dev.labels).mean())
    best = max(scores, key=lambda n: (scores[n], -list(candidates).index(n))) if scores else next(iter(fitted))
    return best, fitted[best], scores


def responsiveness(predicted: np.ndarray, corrected: np.ndarray, labels: np.ndarray, misread: np.ndarray) -> dict:
    """What setting each row's misread concepts to gold does to its label. ``predicted`` and
    ``corrected``: ``[N]`` labels before and after; ``misread``: ``[N]``, the row has a misread
    concept. ``changed_share``: of the misread rows; ``to_gold_share``, ``away_from_gold_share``:
    of the changed ones (the rest change from one wrong label to another)."""
    predicted, corrected, labels = predicted[misread], corrected[misread], labels[misread]
    changed = predicted != corrected
    n_changed = int(changed.sum())
    to_gold, away = int((changed & (corrected == labels)).sum()), int((changed & (predicted == labels)).sum())
    return {
        "rows_misread": int(misread.sum()),
        "changed": n_changed,
        "to_gold": to_gold,
        "away_from_gold": away,
        "changed_share": n_changed / len(predicted) if len(predicted) else None,
        "to_gold_share": to_gold / n_changed if n_changed else None,
        "away_from_gold_share": away / n_changed if n_changed else None,
    }


def completeness(concept_accuracy: float, black_box_accuracy: float, chance_accuracy: float) -> float | None:
    """η = (a_c − a_r) / (a_b − a_r); None when the black box is no better than chance (there is
    no accuracy above chance to carry)."""
    if black_box_accuracy <= chance_accuracy:
        return None
    return (concept_accuracy - chance_accuracy) / (black_box_accuracy - chance_accuracy)


@torch.no_grad()
def bottleneck_honesty(
    model,
    outputs: TextOutputs,
    train: Split,
    split: Split,
    black_box_accuracy: float | None = None,
    dev: Split | None = None,
) -> dict:
    reason = concept_applicability(model)
    if reason:
        return {"skipped": reason}
    model.eval()
    found, states = split_outputs(model, outputs, split)
    gold = torch.from_numpy(split.concepts).to(model.device)

    def accuracy(logits) -> float:
        logits = logits.cpu().numpy() if isinstance(logits, torch.Tensor) else logits
        return float((logits.argmax(-1) == split.labels).mean())

    predicted = accuracy(found["label_logits"])
    forced = accuracy(model.intervened_label_logits(states, gold, correct_only=False))
    per_concept = {}
    for k, concept in enumerate(model.spec.concepts):
        alone = torch.full_like(gold, MISSING)
        alone[:, k] = gold[:, k]
        per_concept[concept.name] = accuracy(model.intervened_label_logits(states, alone)) - predicted
    read = np.stack([logits.argmax(-1) for logits in found["concept_logits"]], axis=1)
    misread = (split.concepts != MISSING) & (read != split.concepts)
    to_gold = torch.from_numpy(np.where(misread, split.concepts, MISSING)).to(model.device)
    corrected = model.intervened_label_logits(states, to_gold, correct_only=False).argmax(-1).cpu().numpy()
    decided = torch.from_numpy(found["label_logits"].argmax(-1)).to(model.device)
    total, from_value = model.value_and_text_contributions(states, decided)
    shares = values_share(from_value, total - from_value)
    from_values_alone = model.label_from_concepts(model.concept_value_readings(states)).argmax(-1) == decided
    sizes = [len(c.values) for c in model.spec.concepts]
    predictor, from_concepts, dev_scores = best_concept_predictor(train, dev, sizes)
    concept_accuracy = float((from_concepts.predict(one_hot_concepts(split.concepts, sizes)) == split.labels).mean())
    # the values the model reads, where the row has a gold value (so that only misreadings differ)
    read = np.where(split.concepts == MISSING, MISSING, read)
    read_accuracy = float((from_concepts.predict(one_hot_concepts(read, sizes)) == split.labels).mean())
    chance = float((split.labels == np.bincount(train.labels).argmax()).mean())
    black_box = predicted if black_box_accuracy is None else black_box_accuracy
    return {
        "n": len(split),
        "task_accuracy": predicted,
        "task_accuracy_all_concepts_forced": forced,
        "accuracy_change_one_concept_corrected": per_concept,
        "concept_values_accuracy": concept_accuracy,
        "chance_accuracy": chance,
        "concept_predictor": predictor,
        "concept_predictor_dev_accuracy": dev_scores,
        "black_box_accuracy": black_box,
        "black_box": "given" if black_box_accuracy is not None else "this model",
        "completeness": completeness(concept_accuracy, black_box, chance),
        "predicted_values_accuracy": read_accuracy,
        "completeness_of_predicted_values": completeness(read_accuracy, black_box, chance),
        "concept_values_share": None if shares.isnan().all() else float(shares.nanmean()),
        "decisions_from_values_alone": None if shares.isnan().all() else float(from_values_alone.float().mean()),
        "responsiveness": responsiveness(found["label_logits"].argmax(-1), corrected, split.labels, misread.any(1)),
    }
