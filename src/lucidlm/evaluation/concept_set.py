"""Is the concept set any good? For a model whose concepts are statements (``automatic_concepts``):
how each concept's activation is distributed, which never fire, which statements say nearly the
same thing, which concepts the label layer reads for each class, and, where the data also has
human concept labels that a statement stands for (its ``matches``), how well they agree (ROC AUC).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from ..data import Split
from ..data.automatic_concepts import DEFAULT_SCORER, VALUES, Statement, statement_embeddings

NEVER_FIRES = 0.01  # a concept active (p(yes) ≥ 0.5) on fewer rows than this share never fires
NEAR_DUPLICATE = 0.9  # statements whose sentence embeddings' cosine exceeds this say the same thing


def concept_set_applicability(model) -> str | None:
    concepts = model.spec.concepts
    if not concepts or any(c.values != VALUES for c in concepts):
        return "its concepts are not statements scored without labels (data.automatic_concepts)"
    return None


def concept_set_quality(
    model,
    outputs,
    split: Split,
    statements: list[Statement] | None = None,
    human: dict[str, np.ndarray] | None = None,
    scorer: str = DEFAULT_SCORER,
) -> dict:
    """``outputs``: the evaluation's ``TextOutputs``; ``human``: human concept values (strings) per
    row of ``split``, by concept name, for the statements' ``matches``."""
    reason = concept_set_applicability(model)
    if reason:
        return {"skipped": reason}
    names = model.spec.concept_names
    logits = outputs.get(split.texts, split.text_pairs)["concept_logits"]
    probs = np.stack([1.0 / (1.0 + np.exp(l[:, 0] - l[:, 1])) for l in logits], axis=1)  # p(yes)
    firing = (probs >= 0.5).mean(0)
    activations = {
        n: {
            "mean": float(probs[:, j].mean()),
            "std": float(probs[:, j].std()),
            "firing": float(firing[j]),
            "quantiles": np.quantile(probs[:, j], [0.1, 0.5, 0.9]).round(4).tolist(),
        }
        for j, n in enumerate(names)
    }
    embeddings = statement_embeddings(names, scorer).numpy()
    similarity = embeddings @ embeddings.T
    duplicates = [
        {"concepts": [names[i], names[j]], "cosine": float(similarity[i, j])}
        for i in range(len(names))
        for j in range(i + 1, len(names))
        if similarity[i, j] > NEAR_DUPLICATE
    ]
    result = {
        "rows": len(split),
        "concepts": len(names),
        "activations": activations,
        "never_fire": [n for j, n in enumerate(names) if firing[j] < NEVER_FIRES],
        "near_duplicates": duplicates,
        "near_duplicate_threshold": NEAR_DUPLICATE,
        "label_layer": label_layer_weights(model),
    }
    if statements and human:
        result["human_agreement"] = human_agreement(names, probs, statements, human)
    return result


def label_layer_weights(model) -> dict[str, list[dict]]:
    """Per class, the concepts its logit reads (non-zero weight), largest first. A concept's
    weight: how much the class's logit rises when the concept goes from no to yes (two logits a
    statement, ``soft_targets``), or per unit of its one activation (``cos3``)."""
    weight = model.label_head.weight.detach().cpu().numpy()
    sizes = [model.concept_layer.width // len(model.spec.concepts)] * len(model.spec.concepts)
    per_concept = np.split(weight, np.cumsum(sizes)[:-1], axis=1)
    out = {}
    for c, label in enumerate(model.spec.classes or ["value"]):
        rows = []
        for concept, w in zip(model.spec.concept_names, per_concept):
            if np.any(w[c] != 0):
                effect = (
                    float(w[c][1] - w[c][0])
                    if w.shape[1] == 2
                    else float(w[c][0])
                    if w.shape[1] == 1
                    else float(np.linalg.norm(w[c]))
                )
                rows.append({"concept": concept, "weight": effect})
        out[label] = sorted(rows, key=lambda r: -abs(r["weight"]))
    return out


def human_agreement(
    names: list[str], probs: np.ndarray, statements: list[Statement], human: dict[str, np.ndarray]
) -> list[dict]:
    """ROC AUC of each statement's p(yes) against the human label it stands for (``matches``)."""
    rows = []
    for j, statement in enumerate(statements):
        for concept, value in statement.matches:
            if concept not in human:
                continue
            truth = human[concept] == value
            if truth.all() or not truth.any():
                continue
            rows.append(
                {"concept": names[j], "human": f"{concept} = {value}", "auc": float(roc_auc_score(truth, probs[:, j]))}
            )
    return rows
