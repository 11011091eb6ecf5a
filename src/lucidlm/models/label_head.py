"""The c→y fit of a concept model's label head, one point of its regularisation path at a time
(docs/methods.md §1.3, §6.5): scikit-learn's ``LogisticRegression`` with an L2 penalty (lbfgs) or
an elastic net (saga), and a record of how far each fit got: its iterations, whether the solver
stopped by its tolerance (``converged``) and how far the weights are from the penalised optimum
(``optimality``), so that a path whose non-zero counts go up and down can be told apart from a
solver that stopped early.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.special import expit, softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

ELASTIC_TOL = 1e-3  # saga's tolerance: the largest weight change of an epoch, relative to the largest weight
ELASTIC_MAX_ITER = 3000  # saga's epochs at most
L2_MAX_ITER = 2000  # lbfgs's iterations at most


def fit_logistic(
    features: np.ndarray,
    labels: np.ndarray,
    strength: float,
    l1_ratio: float | None = None,
    tol: float = ELASTIC_TOL,
    max_iter: int = ELASTIC_MAX_ITER,
) -> tuple[LogisticRegression, dict]:
    """One point of the path: ``LogisticRegression(C=strength)``, an elastic net with l1 share
    ``l1_ratio`` (saga, ``tol``, ``max_iter``) or, without it, L2 (lbfgs, ``L2_MAX_ITER``). Returns
    the fitted head and its record: ``n_iter`` (the most any class took), ``max_iter``,
    ``converged`` (the solver stopped by its tolerance before ``max_iter`` and raised no
    ``ConvergenceWarning``) and ``optimality`` (``optimality_gap``)."""
    if l1_ratio is not None:
        options = dict(l1_ratio=l1_ratio, solver="saga", tol=tol, max_iter=max_iter)
    else:
        options = dict(max_iter=L2_MAX_ITER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        head = LogisticRegression(C=strength, **options).fit(features, labels)
    warned = False
    for w in caught:  # the solver's warning becomes the record; any other is shown as it was
        if issubclass(w.category, ConvergenceWarning):
            warned = True
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    n_iter = int(np.max(head.n_iter_))
    return head, {
        "n_iter": n_iter,
        "max_iter": options["max_iter"],
        "converged": bool(n_iter < options["max_iter"] and not warned),
        "optimality": optimality_gap(head, features, labels, strength, l1_ratio or 0.0),
    }


def optimality_gap(
    head: LogisticRegression, features: np.ndarray, labels: np.ndarray, strength: float, l1_ratio: float
) -> float:
    """How far the fitted weights are from the penalised optimum: the largest violation of its
    optimality (KKT) conditions, relative to the loss gradient at zero weights (0: the optimum).

    scikit-learn minimises C·Σ_i loss_i + ρ·‖W‖₁ + (1 − ρ)/2·‖W‖² (ρ the l1 share, the intercept
    unpenalised). With g = C·∇_W Σ loss + (1 − ρ)·W, a weight w ≠ 0 is optimal when
    g + ρ·sign(w) = 0, and a weight at 0 when |g| ≤ ρ."""
    weight, bias = head.coef_, head.intercept_
    if weight.shape[0] == 1:  # binary: one logit for classes_[1]
        target = (labels == head.classes_[1]).astype(float)[:, None]
        residual = expit(features @ weight.T + bias) - target
    else:
        target = (labels[:, None] == head.classes_[None, :]).astype(float)
        residual = softmax(features @ weight.T + bias, axis=1) - target
    gradient = strength * residual.T @ features  # [rows of W, F]
    at_zero = strength * (target.mean(0) - target).T @ features  # the intercept-only fit's
    g = gradient + (1 - l1_ratio) * weight
    violation = np.where(weight != 0, np.abs(g + l1_ratio * np.sign(weight)), np.maximum(np.abs(g) - l1_ratio, 0.0))
    return float(violation.max() / max(float(np.abs(at_zero).max()), 1e-12))
