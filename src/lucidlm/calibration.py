"""Calibration (docs/methods.md §7.2): temperature scaling fitted on dev after training (Guo et
al., ICML 2017), and the figures that say whether a probability means what it says: expected
calibration error over 15 equal-width confidence bins, negative log-likelihood, and the bins
themselves (a reliability diagram).

A fitted temperature T divides the logits everywhere after: the label's argmax, so accuracy, is
unchanged; its probabilities are the ones a person reads and the policies weigh.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

BINS = 15
TEMPERATURE_RANGE = (0.05, 20.0)  # log T is searched between these


def _log_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=-1)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean −log p(y | x) of softmax(logits / T)."""
    labels = np.asarray(labels, dtype=np.int64)
    return float(-_log_probs(logits, temperature)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the NLL of softmax(logits / T) on these rows (a bounded search over
    log T, in float64: the same rows give the same T)."""
    if len(labels) == 0:
        return 1.0
    low, high = np.log(TEMPERATURE_RANGE)
    found = minimize_scalar(
        lambda log_t: negative_log_likelihood(logits, labels, float(np.exp(log_t))),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(found.x))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> list[dict]:
    """Rows binned by their top probability (``bins`` equal-width bins over [0, 1]): each bin's
    range, row count, mean confidence and accuracy. Empty bins are left out."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    confidence, correct = probs.max(-1), probs.argmax(-1) == labels
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)  # confidence 1.0 joins the last bin
    out = []
    for b in range(bins):
        rows = index == b
        if rows.any():
            out.append(
                {
                    "lower": b / bins,
                    "upper": (b + 1) / bins,
                    "n": int(rows.sum()),
                    "confidence": float(confidence[rows].mean()),
                    "accuracy": float(correct[rows].mean()),
                }
            )
    return out


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Σ_b (n_b / N) · |accuracy_b − confidence_b| over equal-width bins of the top probability."""
    n = len(labels)
    return (
        float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(probs, labels, bins)))
        if n
        else 0.0
    )


def calibration_figures(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict[str, float]:
    """ECE, NLL and mean confidence of softmax(logits / T) against ``labels``."""
    probs = np.exp(_log_probs(logits, temperature))
    return {
        "ece": expected_calibration_error(probs, labels),
        "nll": negative_log_likelihood(logits, labels, temperature),
        "confidence": float(probs.max(-1).mean()) if len(labels) else 0.0,
    }


@dataclass
class Temperatures:
    """What a run's calibration learned: the label's T and each concept's (1.0: as trained), with
    the dev figures before and after (``fitted_on``: the split they were fitted on; None: never)."""

    label: float = 1.0
    concepts: dict[str, float] = field(default_factory=dict)
    fitted_on: str | None = None
    before: dict = field(default_factory=dict)  # {"label": figures, "concepts": {name: figures}}
    after: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Temperatures:
        return cls(**data) if data else cls()
