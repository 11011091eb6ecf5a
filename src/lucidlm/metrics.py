"""Task and concept metrics (docs/methods.md §4). Macro-F1 is always scikit-learn's standard one."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from .calibration import calibration_figures
from .data.task import MISSING


def classification_metrics(gold: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "macro_f1": float(f1_score(gold, predicted, average="macro")),
    }


def regression_metrics(gold: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    gold, predicted = np.asarray(gold, float), np.asarray(predicted, float)
    pearson = float(np.corrcoef(gold, predicted)[0, 1]) if gold.std() > 0 and predicted.std() > 0 else 0.0
    return {"mse": float(np.mean((gold - predicted) ** 2)), "pearson": pearson}


def concept_metrics(gold: np.ndarray, predicted: np.ndarray, names: list[str]) -> dict:
    """Per concept: accuracy and macro-F1 over the rows that have a gold value. Overall: accuracy
    over all (row, concept) pairs with a gold value, and the mean of the per-concept macro-F1s."""
    per_concept, hits, total = {}, 0, 0
    for k, name in enumerate(names):
        known = gold[:, k] != MISSING
        if not known.any():
            continue
        per_concept[name] = classification_metrics(gold[known, k], predicted[known, k])
        hits += int((gold[known, k] == predicted[known, k]).sum())
        total += int(known.sum())
    return {
        "accuracy": hits / total if total else float("nan"),
        "macro_f1": float(np.mean([m["macro_f1"] for m in per_concept.values()])) if per_concept else float("nan"),
        "per_concept": per_concept,
    }


def task_metrics(spec, gold: np.ndarray, label_logits: np.ndarray) -> dict[str, float]:
    """Metrics of a task from its label logits: argmax for classes (with the calibration of their
    probabilities: ECE over 15 bins, NLL), the value for regression."""
    if spec.is_regression:
        return regression_metrics(gold, label_logits[:, 0])
    figures = calibration_figures(label_logits, gold)
    return {**classification_metrics(gold, label_logits.argmax(-1)), "ece": figures["ece"], "nll": figures["nll"]}


def selection_score(metrics: dict) -> float:
    """The number model selection maximises on dev: task accuracy, or -MSE for regression."""
    task = metrics["task"]
    return task["accuracy"] if "accuracy" in task else -task["mse"]
