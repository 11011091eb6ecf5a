"""The terms a concept bottleneck's joint objective adds to CE(y) + λ·Σ_k CE(c_k)
(``ConceptBottleneckLM.training_loss``): RandInt's draw (docs/methods.md §6.2), the sampled-horizon
intervention-aware term (§6.2), counterfactual consistency on CEBaB's human edits (§6.6) and the
penalised side channel (§7.5). Each is a function of the model and its forward pass.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import MISSING
from ..intervene import INTERVENTION_POLICIES
from ..training import same_on_every_process
from .base import evaluation_mode
from .losses import Mixup, task_loss


def random_interventions(gold: torch.Tensor, rate: float, generator=None) -> torch.Tensor:
    """Gold concept values kept with probability ``rate`` each, ``MISSING`` elsewhere."""
    keep = torch.rand(gold.shape, generator=generator, device="cpu").to(gold.device) < rate
    return torch.where(keep, gold, torch.full_like(gold, MISSING))


def intervention_aware_loss(model, states, batch: dict, mix: Mixup | None = None) -> torch.Tensor:
    """T/K × CE(y | the first T concepts of the policy's order set to gold), T ~ U{1..K}: the
    label's loss after a person's corrections, weighted to grow with how many they made.
    With mixup, a mixed row's concept can be set only where both rows have the same gold
    value: those come first, in the policy's order (the most uncertain concepts of a mixed row
    are mostly those where its rows disagree)."""
    k = len(model.spec.concepts)
    t = int(torch.randint(1, k + 1, ()))
    rng = np.random.default_rng(int(torch.randint(2**31 - 1, ())))  # drawn from torch's seeded generator
    detached = [s.detach() for s in states]
    order = torch.from_numpy(INTERVENTION_POLICIES.get(model.config.intervention_policy)(model, detached, rng))
    gold = Mixup.agreed(mix, batch["concepts"])
    if mix is not None:  # the concepts a mixed row can be set on first, in the policy's order
        order = order.to(gold.device)
        order = order.gather(1, (gold == MISSING).gather(1, order).int().argsort(dim=1, stable=True))
    chosen = torch.zeros_like(gold, dtype=torch.bool).scatter_(1, order[:, :t].to(gold.device), True)
    values = torch.where(chosen, gold, torch.full_like(gold, MISSING))
    logits = model.intervened_label_logits(states, values, correct_only=False)
    return (t / k) * Mixup.loss(mix, lambda rows: task_loss(model.spec, logits, rows["labels"]), batch)


def counterfactual_loss(model, forward: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(N(edit) ‖ N(original with k := b)) over pairs drawn from torch's seeded generator
    (a checkpoint restores it); N(edit) is the model's own label distribution on the human
    edit, in evaluation mode and without gradient: the target, not something to move. And
    CE(original with k := b, the edit's gold label) over the drawn pairs whose edit has one
    (0 where none has)."""
    sources, edits, concepts, values, labels = model._counterfactual_rows
    # the pairs of the whole step: process 0's draw, on every process (``same_on_every_process``)
    picked = same_on_every_process(
        torch.randint(len(edits), (min(model.config.counterfactual_batch_size, len(edits)),))
    )
    original = model.encoder.pad([sources[i] for i in picked.tolist()])
    states = forward(original["input_ids"].to(model.device), original["attention_mask"].to(model.device)).concept_states
    set_to = torch.full((len(picked), len(model.spec.concepts)), MISSING, dtype=torch.long)
    set_to[torch.arange(len(picked)), concepts[picked]] = values[picked]
    after = model.intervened_label_logits(states, set_to.to(model.device), correct_only=False)
    consistency = after.sum() * 0.0
    if model.config.counterfactual_loss_weight > 0:
        edited = model.encoder.pad([edits[i] for i in picked.tolist()])
        with torch.no_grad(), evaluation_mode(model):
            target = model(edited["input_ids"].to(model.device), edited["attention_mask"].to(model.device)).label_logits
        consistency = nn.functional.kl_div(
            after.log_softmax(-1), target.log_softmax(-1), log_target=True, reduction="batchmean"
        )
    gold = labels[picked].to(model.device)
    edit_label = (
        nn.functional.cross_entropy(after[gold != MISSING], gold[gold != MISSING])
        if (gold != MISSING).any()
        else after.sum() * 0.0
    )
    return consistency, edit_label


def side_channel(model, states) -> torch.Tensor:
    """The mean over rows and labels of Σ_k (w_c,k·(a_k − r_k))²: the squared contributions to
    each label's logit of the text beside the concept values."""
    text = torch.cat(
        [a - r for a, r in zip(model.concept_activations(states), model.concept_value_readings(states))], -1
    )
    weights = model.label_head.weight.split([a.shape[-1] for a in model.concept_activations(states)], dim=-1)
    parts = text.split([w.shape[-1] for w in weights], dim=-1)
    per_concept = torch.stack([part @ w.T for part, w in zip(parts, weights)], dim=-1)  # [B, C, K]
    return per_concept.pow(2).sum(-1).mean()
