"""Are the explanations faithful to the model? Token and concept level (docs/methods.md §4).

**Tokens** (ERASER, DeYoung et al. 2020; as the ``ferret`` package computes them). An
explanation scores the tokens of x toward a target t: the predicted label, or a concept's
predicted value; p_t(x) is the model's probability of t. For k ∈ {1, 5, 10, 20, 50}%:

    comprehensiveness_k = p_t(x) − p_t(x without its top-k% tokens)   (higher: more faithful)
    sufficiency_k       = p_t(x) − p_t(only its top-k% tokens)        (lower: more faithful)

and AOPC is their mean over the five k.

*Removing tokens* is ERASER's deletion, applied identically to every explainer (the model's own
explanation, gradient × input, random scores). The n non-special tokens of the input ids are
ranked by score, highest first (ties: earlier position first); the top k% are the first
n_k = min(n − 1, max(1, ⌈k·n/100⌉)) of them. "Without" deletes those positions from the input
ids; "only" deletes every other non-special token. Special tokens ([CLS], [SEP]) always stay;
nothing is re-tokenised and nothing takes a deleted token's place: the sequence gets shorter.
Texts with fewer than two non-special tokens are left out.

**Concepts.** For a concept model the predicted label ŷ's logit is the sum over concepts of
label-head weight × concept activation (plus a bias): concept k's contribution. Removing a
concept replaces its activation, either by the value ``unknown`` (the model's own intervention;
set as ``intervene`` sets it) or by its mean activation over the
evaluated rows. With the concepts ranked by contribution, highest first, for m = 1 … K−1:

    comprehensiveness_m = p(ŷ | x) − p(ŷ | its m most contributing concepts removed)
    sufficiency_m       = p(ŷ | x) − p(ŷ | all but its m most contributing concepts removed)

AOPC is the mean over m; the same with the concepts in a random order (seeded) is the baseline.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data import MISSING, Split
from ..errors import LucidError
from ..explain.tokens import TOKEN_ATTRIBUTIONS, frame_tokens
from ..intervene import overwrite_concepts, random_order
from ..models import ConceptModel
from ..progress import tracked
from .outputs import TextOutputs, softmax, split_outputs

FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)
UNKNOWN = "unknown"

# ---- token level: the arithmetic -----------------------------------------------------------


def tokens_to_remove(n_tokens: int, fraction: float) -> int:
    """n_k: how many of ``n_tokens`` non-special tokens make the top ``fraction``."""
    return min(n_tokens - 1, max(1, math.ceil(fraction * n_tokens - 1e-9)))


def rank_tokens(scores: Sequence[float], special: Sequence[bool]) -> list[int]:
    """Positions of the non-special tokens, highest score first (ties: earlier position first)."""
    positions = [i for i, s in enumerate(special) if not s]
    return sorted(positions, key=lambda i: (-scores[i], i))


def removal_inputs(
    ids: Sequence[int], special: Sequence[bool], scores: Sequence[float], fractions: Sequence[float] = FRACTIONS
) -> tuple[list[list[int]], list[list[int]]]:
    """For each fraction: ``ids`` without its top tokens (comprehensiveness) and with only
    them and the special tokens (sufficiency)."""
    ranked = rank_tokens(scores, special)
    without, only = [], []
    for fraction in fractions:
        top = set(ranked[: tokens_to_remove(len(ranked), fraction)])
        without.append([t for i, t in enumerate(ids) if i not in top])
        only.append([t for i, t in enumerate(ids) if special[i] or i in top])
    return without, only


def token_faithfulness_of(
    ids: Sequence[int],
    special: Sequence[bool],
    explanations: dict[str, Sequence[float]],
    probability: Callable[[list[list[int]]], np.ndarray],
    fractions: Sequence[float] = FRACTIONS,
) -> dict[str, dict[str, list[float]]]:
    """Comprehensiveness and sufficiency at every fraction, for each explanation (name -> token
    scores) of one input. ``probability`` maps id sequences to p_t of each; it is called once,
    on the input followed by every explanation's perturbed inputs."""
    sequences, spans = [list(ids)], {}
    for name, scores in explanations.items():
        without, only = removal_inputs(ids, special, scores, fractions)
        spans[name] = len(sequences)
        sequences += without + only
    p = np.asarray(probability(sequences), dtype=float)
    n = len(fractions)
    return {
        name: {
            "comprehensiveness": (p[0] - p[start : start + n]).tolist(),
            "sufficiency": (p[0] - p[start + n : start + 2 * n]).tolist(),
        }
        for name, start in spans.items()
    }


# ---- concept level: the arithmetic ---------------------------------------------------------


def concept_removal_drops(
    base: np.ndarray, probability: Callable[[np.ndarray], np.ndarray], order: np.ndarray
) -> dict[str, np.ndarray]:
    """``[N, K−1]`` drops of the predicted label's probability ``base`` ``[N]`` as the first m
    concepts of each row's ``order`` ``[N, K]`` are removed (comprehensiveness) or all but them
    (sufficiency), m = 1 … K−1. ``probability(removed)`` maps a ``[N, K]`` boolean mask of
    removed concepts to the predicted label's probability ``[N]``."""
    n, k = order.shape
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(k)[None, :].repeat(n, 0), axis=1)  # rank[i, c]: c's place in row i
    comprehensiveness, sufficiency = [], []
    for m in range(1, k):
        first_m = rank < m
        comprehensiveness.append(base - probability(first_m))
        sufficiency.append(base - probability(~first_m))
    empty = np.zeros((n, 0))
    return {
        "comprehensiveness": np.stack(comprehensiveness, 1) if comprehensiveness else empty,
        "sufficiency": np.stack(sufficiency, 1) if sufficiency else empty,
    }


def order_by(scores: np.ndarray) -> np.ndarray:
    """``[N, K]`` concept indices, highest score first (ties: lower index first)."""
    return np.argsort(-scores, axis=1, kind="stable")


def curve_summary(drops: dict[str, np.ndarray]) -> dict:
    """Per-step means and their mean (AOPC), over the rows."""
    out = {}
    for name, values in drops.items():
        per_step = values.mean(0) if len(values) else np.zeros(values.shape[1])
        out[name] = {"aopc": float(per_step.mean()) if per_step.size else float("nan"), "per_step": per_step.tolist()}
    return out


# ---- the models ----------------------------------------------------------------------------


def target_scorer(model, target: str, prediction) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(input_ids, attention_mask) -> [B]``: the probability of what an explanation's ``target``
    explains: a concept's predicted value (through the concept's own path: its subnetwork for
    SparseCBM), or the predicted label (``"label"``, and proto-lm's ``"attention"``)."""
    if target in model.spec.concept_names:
        k = model.spec.concept_names.index(target)
        value = model.spec.concepts[k].index(prediction.concepts[target].value)
        return lambda ids, mask: model.single_concept_logits(ids, mask, k).softmax(-1)[:, value]
    label = model.spec.label_index(prediction.label)
    return lambda ids, mask: model(ids, mask).label_logits.softmax(-1)[:, label]


def padded(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask (the models mask padding out)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def token_applicability(model, split: Split) -> str | None:
    """Why the token suite does not apply to this model, or None."""
    if model.spec.is_regression:
        return "a regression task has no class probabilities to remove tokens from"
    if split.text_pairs is not None:
        return "token removal is not defined here for sentence-pair tasks"
    return None


def token_faithfulness(
    model, split: Split, samples: int = 200, seed: int = 0, fractions: Sequence[float] = FRACTIONS, batch_size: int = 64
) -> dict:
    """Comprehensiveness and sufficiency AOPC of every token explanation ``model.explain`` gives
    (each target it explains), beside every other registered method (``TOKEN_ATTRIBUTIONS``:
    gradient × input, …) and random scores on the same targets,
    over ``samples`` rows of ``split`` drawn with ``seed``."""
    reason = token_applicability(model, split)
    if reason:
        return {"skipped": reason}
    model.eval()
    rows = split.sample(samples, seed=seed)
    rng = np.random.default_rng(seed)
    tokenizer = model.tokenizer
    per_target: dict[str, dict[str, dict[str, list]]] = {}
    own_method, left_out = None, 0
    for text in tracked(rows.texts, len(rows), "rows explained (token faithfulness)"):
        try:
            batch = model.encoder.batch([text])
        except LucidError:  # nothing readable in it: explain() refuses it too
            left_out += 1
            continue
        ids, mask = batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device)
        id_list = ids[0].tolist()
        special = frame_tokens(
            tokenizer, id_list
        )  # [UNK] stands for the text's characters: ranked and removed like them
        if sum(not s for s in special) < 2:
            left_out += 1
            continue
        explanation = model.explain(text)
        own = [a for a in explanation.tokens if a.target != "attention"]
        attention = [a for a in explanation.tokens if a.target == "attention"]
        for attribution in own or attention:
            target = "label" if attribution.target == "attention" else attribution.target
            own_method = attribution.method.split("(")[0]
            score = target_scorer(model, attribution.target, explanation.prediction)
            explanations = {own_method: attribution.scores}
            for name, method in TOKEN_ATTRIBUTIONS.items():  # every other registered method, as a baseline
                if name != own_method:
                    explanations[name] = method().attribute(model, ids, mask, score, target).scores
            explanations["random"] = rng.random(len(id_list)).tolist()
            if target == "label" and own:  # proto-lm's attention, scored beside its label attribution
                explanations.update({a.method: a.scores for a in attention})

            def probability(sequences, score=score):
                with torch.no_grad():
                    return score(*padded(sequences, tokenizer.pad_token_id, model.device)).cpu().numpy()

            found = token_faithfulness_of(id_list, special, explanations, probability, fractions)
            for explainer, drops in found.items():
                slot = per_target.setdefault(target, {}).setdefault(
                    explainer, {"comprehensiveness": [], "sufficiency": []}
                )
                for name, values in drops.items():
                    slot[name].append(values)
    targets = {
        target: {
            explainer: {
                **curve_summary({k: np.asarray(v) for k, v in drops.items()}),
                "n": len(drops["comprehensiveness"]),
            }
            for explainer, drops in explainers.items()
        }
        for target, explainers in per_target.items()
    }
    return {
        "n": len(rows) - left_out,
        "sampled_from": len(split),
        "left_out": left_out,
        "seed": seed,
        "fractions": list(fractions),
        "own_explainer": own_method,
        "removal": "deletion from the input ids, special tokens kept (ERASER)",
        "targets": targets,
    }


def concept_applicability(model) -> str | None:
    if not isinstance(model, ConceptModel):
        return f"a {model.family} model has no concepts"
    if model.spec.is_regression:
        return "a regression task has no predicted label probability"
    if len(model.spec.concepts) < 2:
        return "it takes two concepts or more to rank them"
    return None


@torch.no_grad()
def concept_faithfulness(model, outputs: TextOutputs, split: Split, seed: int = 0, repeats: int = 5) -> dict:
    """Comprehensiveness and sufficiency of removing the most contributing concepts (to
    ``unknown``, or to their mean activation) against random concepts (``repeats`` random
    orders per row, seeded), on every row of ``split``."""
    reason = concept_applicability(model)
    if reason:
        return {"skipped": reason}
    model.eval()
    found, states = split_outputs(model, outputs, split)
    activations = model.concept_activations(states)
    predicted = torch.from_numpy(found["label_logits"].argmax(-1)).to(model.device)
    base = softmax(found["label_logits"])[np.arange(len(predicted)), predicted.cpu().numpy()]
    contributions = model.concept_contribution_matrix(activations, predicted).cpu().numpy()
    n, k = contributions.shape
    means = [a.mean(0, keepdim=True) for a in activations]

    def probability(how: str) -> Callable[[np.ndarray], np.ndarray]:
        def p(removed: np.ndarray) -> np.ndarray:
            removed_t = torch.from_numpy(removed).to(model.device)
            if how == UNKNOWN:
                unknown = torch.tensor([c.values.index(UNKNOWN) for c in model.spec.concepts], device=model.device)
                values = torch.where(removed_t, unknown[None, :], torch.full_like(removed_t, MISSING, dtype=torch.long))
                logits = model.intervened_label_logits(states, values)
            else:
                values = torch.where(removed_t, 0, MISSING)
                logits = model.label_from_concepts(overwrite_concepts(activations, values, means))
            return logits.softmax(-1).gather(1, predicted[:, None])[:, 0].cpu().numpy()

        return p

    modes = {}
    hows = ["mean"] + ([UNKNOWN] if all(UNKNOWN in c.values for c in model.spec.concepts) else [])
    for how in sorted(hows, reverse=True):
        top = concept_removal_drops(base, probability(how), order_by(contributions))
        rng = np.random.default_rng(seed)
        draws = [concept_removal_drops(base, probability(how), random_order(n, k, rng)) for _ in range(repeats)]
        random = {name: np.mean([d[name] for d in draws], axis=0) for name in top}
        modes[how] = {"most_contributing": curve_summary(top), "random": curve_summary(random)}
    return {
        "n": n,
        "concepts": k,
        "steps": list(range(1, k)),
        "random_repeats": repeats,
        "seed": seed,
        "removal": {
            "unknown": "the concept set to its value 'unknown' (the model's intervention)",
            "mean": "the concept's activation replaced by its mean over the evaluated rows",
        },
        "modes": modes,
    }
