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
import torch
from scipy.special import expit, softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge

from ..data import MISSING, Split
from ..metrics import selection_score, task_metrics
from ..training import TrainingConfig
from .auxiliary_losses import intervention_aware_loss, random_interventions
from .losses import task_loss

ELASTIC_TOL = 1e-3  # saga's tolerance: the largest weight change of an epoch, relative to the largest weight
ELASTIC_MAX_ITER = 3000  # saga's epochs at most
L2_MAX_ITER = 2000  # lbfgs's iterations at most
L2_PATH = (0.01, 0.1, 1.0, 10.0, 100.0)  # C = 1 / strength
ELASTIC_PATH = tuple(np.logspace(-3, 1, 9))  # from a few concepts per class to nearly dense


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


# ---- a concept model's label head: fitted c→y, or tuned on held-out rows -------------------------
def fit_label_head(model, train: Split, dev: Split | None, gold: bool, config: TrainingConfig) -> None:
    """The c -> y stage: a linear model (scikit-learn, exact and repeatable) on the concept
    activations; its L2 strength is chosen on dev, where it always reads *predicted* concepts.
    Rows without a label (corrections of concepts only) teach the concepts, not this head."""
    if not model.spec.is_regression and (train.labels == MISSING).any():
        train = train.select(np.flatnonzero(train.labels != MISSING))
    states = concept_states_of(model, train, config)
    values = torch.from_numpy(train.concepts)
    if not gold:
        values = random_interventions(
            values, model.config.random_intervention_rate, torch.Generator().manual_seed(config.seed)
        )
    features = torch.cat(model.set_concepts(states, model.concept_activations(states), values), -1).numpy()
    dev_features = (
        torch.cat(model.concept_activations(concept_states_of(model, dev, config)), -1).numpy() if dev else None
    )
    elastic = model.config.label_penalty == "elastic" and not model.spec.is_regression
    # the elastic net's solver (saga) wants features on one scale: fitted standardised, folded back after
    mean, scale = (features.mean(0), features.std(0) + 1e-6) if elastic else (0.0, 1.0)
    best, path = None, []
    for strength in (ELASTIC_PATH if elastic else L2_PATH) if dev is not None else (1.0,):
        fit = {}  # the solver's record: iterations, converged, optimality (label_head.fit_logistic)
        if model.spec.is_regression:
            head = Ridge(alpha=1.0 / strength).fit(features, train.labels)
            weight, bias = head.coef_[None, :], np.atleast_1d(head.intercept_)
        else:
            head, fit = fit_logistic(
                (features - mean) / scale, train.labels, strength, model.config.label_l1_ratio if elastic else None
            )
            weight, bias = class_weights(head, model.spec.num_labels)
            weight = weight / scale
            bias = bias - weight @ np.broadcast_to(mean, weight.shape[1:])
        score = 0.0 if dev is None else head_score(model, weight, bias, dev_features, dev.labels)
        path.append(
            {"C": float(strength), "nonzero_weights": int((weight != 0).sum()), "dev_score": float(score), **fit}
        )
        if best is None or score > best[0]:
            best = (score, weight, bias)
    with torch.no_grad():
        model.label_head.weight.copy_(torch.as_tensor(best[1], dtype=torch.float32))
        model.label_head.bias.copy_(torch.as_tensor(best[2], dtype=torch.float32))
    solver = {"solver": "saga", "tol": ELASTIC_TOL, "max_iter": ELASTIC_MAX_ITER} if elastic else {}
    model.training_history.append(
        {
            "stage": "c→y",
            "gold_concepts": gold,
            "penalty": model.config.label_penalty,
            "concept_objective": model.config.concept_objective,
            "features": features.shape[1],
            "dev_score": float(best[0]),
            **solver,
            "converged": all(p.get("converged", True) for p in path),
            "path": path,
        }
    )


def tune_label_head(model, held_out: Split, dev: Split | None, config: TrainingConfig, epochs: int = 30) -> None:
    """The label head alone, trained on held-out rows' concept states (computed once, backbone
    and concept layer frozen) with the joint loss's RandInt and IntCEM terms; the epoch with
    the best dev score is kept, the jointly trained head (epoch 0) included (without dev: the
    last)."""
    states = [s.to(model.device) for s in concept_states_of(model, held_out, config)]
    dev_states = [s.to(model.device) for s in concept_states_of(model, dev, config)] if dev is not None else None
    labels, gold = (
        torch.from_numpy(held_out.labels).to(model.device),
        torch.from_numpy(held_out.concepts).to(model.device),
    )
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.label_head.parameters(), lr=config.head_learning_rate)

    def score(epoch: int) -> float:
        if dev_states is None:
            return float(epoch)  # no dev: the last epoch
        with torch.no_grad():
            logits = model.label_from_concepts(model.concept_activations(dev_states)).cpu().numpy()
        return selection_score({"task": task_metrics(model.spec, dev.labels, logits)})

    best = (score(0), 0, {k: v.clone() for k, v in model.label_head.state_dict().items()})
    for epoch in range(1, epochs + 1):
        for rows in torch.randperm(len(labels), generator=generator).split(config.batch_size):
            rows = rows.to(model.device)
            batch = {"labels": labels[rows], "concepts": gold[rows]}
            part = [s[rows] for s in states]
            values = random_interventions(batch["concepts"], model.config.random_intervention_rate, generator)
            activations = model.set_concepts(part, model.concept_activations(part), values)
            loss = task_loss(model.spec, model.label_from_concepts(activations), batch["labels"])
            if model.config.intervention_loss_weight > 0:
                loss = loss + model.config.intervention_loss_weight * intervention_aware_loss(model, part, batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        current = score(epoch)
        if current > best[0]:
            best = (current, epoch, {k: v.clone() for k, v in model.label_head.state_dict().items()})
    model.label_head.load_state_dict(best[2])
    model.training_history.append(
        {
            "stage": "held-out label head",
            "rows": len(held_out),
            "best_epoch": best[1],
            "dev_score": None if dev is None else float(best[0]),
        }
    )


@torch.no_grad()
def concept_states_of(model, split: Split, config: TrainingConfig) -> list[torch.Tensor]:
    return [torch.from_numpy(x) for x in model.infer(split, config.eval_batch_size)["concept_states"]]


def head_score(model, weight, bias, features, labels) -> float:
    logits = features @ weight.T + bias
    return selection_score({"task": task_metrics(model.spec, labels, logits)})


def class_weights(head: LogisticRegression, num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's coefficients as a ``[num_labels, F]`` linear layer (binary and absent classes too)."""
    coef, intercept = head.coef_, head.intercept_
    if coef.shape[0] == 1:  # binary: one logit z for class 1, i.e. logits (0, z)
        coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
    weight = np.zeros((num_labels, coef.shape[1]))
    bias = np.full(num_labels, -30.0)  # a class absent from training is never predicted
    weight[head.classes_], bias[head.classes_] = coef, intercept
    return weight, bias
