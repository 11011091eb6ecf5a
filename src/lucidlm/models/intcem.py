"""Intervention-aware objectives of a concept bottleneck (docs/methods.md §6.2, §7.1), from
``INTERVENTION_OBJECTIVES`` (``intervention_objective`` in a bottleneck config); each is on when
``intervention_loss_weight`` w > 0, in joint mode.

- ``sampled_horizon`` (the default; §6.2): one T ~ U{1..K} a batch, each row's first T concepts
  in the fixed ``intervention_policy``'s order set to gold, w·(T/K)·CE(y | corrected) added to the
  joint loss (``auxiliary_losses.intervention_aware_loss``). A simplification of IntCEM, not
  IntCEM: runs and configs named "IntCEM" before this option were of it.
- ``published`` (§7.1): IntCEM as published (Espinosa Zarlenga et al., NeurIPS 2023, "Learning to
  Receive Help"; the ``cem`` repository's ``cem/models/intcbm.py``, whose defaults these are).
  Each step starts from random interventions μ⁽⁰⁾ (RandInt, ``random_intervention_rate``, plus
  n₀ more concepts a row drawn uniformly), then rolls out T further interventions chosen by a
  learned policy ψ (``InterventionPolicyNet``) with a hard Gumbel-softmax. T is bounded by a
  horizon that grows with the training step (``horizon_limit``). ψ is trained by imitation:
  cross-entropy toward the concept whose correction lowers the row's task loss most, found by
  trying each candidate (``imitation_targets``). The task loss is taken before the rollout
  (CE(y | μ⁽⁰⁾), the prediction the plain term reads) and after every rollout step, weighted γ^t
  (γ = ``rollout_discount`` = 1.1) and normalised by 1 + Σ_t γ^t (``rollout_weights``):

      L = Σ_{t=0..T} γ^t·CE(y | μ⁽ᵗ⁾) / (1 + Σ_{t=1..T} γ^t) + λ·Σ_k CE(c_k) + w·(1/T)·Σ_t CE(ψ_t, target_t)

  w = ``intervention_loss_weight`` is the released code's ``intervention_weight`` (λ_roll of the
  paper, default 5), the weight of ψ's imitation loss; the rollout's task loss, which includes
  the un-intervened one, replaces the plain CE(y) term (the released code asserts
  ``task_loss_weight == 0`` and weighs the rollout's task loss 1).

Departures from the released code (docs/methods.md §7.1): RandInt draws each (row, concept) on its
own, as §6.2's RandInt does (the released code draws one mask for the whole batch), so a batch's
n₀ and T are bounded by its row with the most concepts left; a concept already set, or without a
gold value, is never a candidate (the released code scores every concept during training, so ψ can
pick one it already set); the imitation target is the candidate with the lowest task loss (the
released code: the highest logit of the gold class); ψ reads the label head's input after the
interventions so far, the concepts' probabilities (set ones one-hot at gold) and the mask (the
released code: the mixed embeddings and the mask). ``rollout_losses: last_step`` takes, as the
released code does by default (``include_only_last_trajectory_loss``), the task loss before the
rollout and after its last step only; the default ``every_step`` is the paper's sum over steps.

After training, ψ is an intervention policy (``intervene.INTERVENTION_POLICIES["learned"]``,
``learned_order``): a greedy rollout, the highest-scoring concept not yet asked first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import MISSING
from ..errors import LucidError
from ..registry import Registry
from ..training import TrainingHooks
from .auxiliary_losses import intervention_aware_loss
from .base import evaluation_mode
from .losses import task_loss

INTERVENTION_OBJECTIVES: Registry = Registry("intervention_objective")
ROLLOUT_LOSSES = ("every_step", "last_step")
POLICY_LAYERS = (256, 128)  # ψ's hidden layers (the released code's int_model_layers)


# ---- the schedule and the weights, as numbers -------------------------------------------------
def horizon_limit(step: int, initial: float, rate: float, concepts: int) -> float:
    """The horizon H at training step ``step`` (0-based): ``initial``·``rate``^step, grown once a
    step while it is below K + 1, then kept (the released code's ``horizon_limit``, multiplied by
    ``horizon_rate`` after every training step while it is under K + 1)."""
    limit = concepts + 1
    if initial >= limit or rate <= 1.0:
        return float(initial)
    last = max(math.ceil(math.log(limit / initial) / math.log(rate)) - 1, 0)
    while initial * rate**last < limit:  # up to the first step whose H is >= K + 1 (the logarithm rounds)
        last += 1
    return float(initial * rate ** min(step, last))


def initial_bound(horizon: float, free: int) -> int:
    """n₀ ~ U{0 … B − 1} extra random interventions, B = min(⌊H⌋, free − 1) (none when B ≤ 0): the
    released code's ``_setup_intervention_trajectory`` (``np.random.randint``'s upper bound is
    exclusive: at least one concept is left for the rollout)."""
    return min(int(horizon), free - 1)


def length_bound(horizon: float, max_horizon: int, free: int, initial: int) -> int:
    """T ~ U{1 … E − 1}, E = min(⌊H⌋, max_horizon, free − n₀) (T = 0 when E ≤ 1), as released."""
    return min(int(horizon), max_horizon, free - initial)


def draw_rollout(
    horizon: float, max_horizon: int, free: int, generator: torch.Generator | None = None
) -> tuple[int, int]:
    """(n₀, T) for one step with ``free`` concepts left after RandInt, drawn from torch's generator
    (the training step's, seeded per process)."""
    if free <= 0:
        return 0, 0
    bottom = initial_bound(horizon, free)
    initial = int(torch.randint(0, bottom, (), generator=generator)) if bottom > 0 else 0
    end = length_bound(horizon, max_horizon, free, initial)
    length = int(torch.randint(1, end, (), generator=generator)) if end > 1 else 0
    return initial, length


def rollout_weights(length: int, discount: float, losses: str = "every_step") -> list[float]:
    """The weight of the task loss before the rollout (t = 0) and after each of its ``length``
    steps: γ^t / (1 + Σ_{t=1..T} γ^t); ``last_step``: only t = 0 and t = T, normalised by 1 + γ^T."""
    raw = [discount**t if (t == 0 or losses == "every_step" or t == length) else 0.0 for t in range(length + 1)]
    total = sum(raw)
    return [w / total for w in raw]


# ---- the policy network ψ ---------------------------------------------------------------------
class InterventionPolicyNet(nn.Module):
    """ψ: scores of which concept to set next, from what the label head reads after the
    interventions so far, each concept's probabilities (a set concept one-hot at its value) and the
    mask of set concepts. The released code's ``concept_rank_model``: batch normalisation before
    each linear layer, LeakyReLU between them, hidden layers ``POLICY_LAYERS``."""

    def __init__(self, width: int, value_counts: list[int], layers=POLICY_LAYERS):
        super().__init__()
        self.value_counts = list(value_counts)
        units = [width + sum(value_counts) + len(value_counts), *layers, len(value_counts)]
        modules: list[nn.Module] = []
        for i in range(1, len(units)):
            modules += [nn.BatchNorm1d(units[i - 1]), nn.Linear(units[i - 1], units[i])]
            if i != len(units) - 1:
                modules.append(nn.LeakyReLU())
        self.net = nn.Sequential(*modules)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training and len(features) == 1:  # batch statistics need two rows: one reads the running ones
            with evaluation_mode(self):
                return self.net(features)
        return self.net(features)


def policy_features(activations: list[torch.Tensor], probs: list[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    return torch.cat([*activations, *probs, mask], dim=-1)


@dataclass
class ConceptReadings:
    """What a rollout mixes, for one batch: the label head's input as predicted and with every
    concept set to its value, each concept's probabilities and that value's one-hot."""

    predicted: list[torch.Tensor]
    set_to: list[torch.Tensor]
    probs: list[torch.Tensor]
    one_hot: list[torch.Tensor]

    @classmethod
    def of(cls, model, states, values: torch.Tensor) -> ConceptReadings:
        """``values`` ``[B, K]``: what setting each concept sets it to (``MISSING``: as predicted)."""
        predicted = model.concept_activations(states)
        set_to = model.set_concepts(states, predicted, values)
        probs = [logits.softmax(-1) for logits in model.concept_logits_of(states)]  # as trained (temperature 1)
        one_hot = [F.one_hot(values[:, k].clamp(min=0), p.shape[-1]).to(p) for k, p in enumerate(probs)]
        return cls(predicted, set_to, probs, one_hot)

    def activations(self, mask: torch.Tensor) -> list[torch.Tensor]:
        """The label head's input with concept k set where ``mask[:, k]`` is 1 (a straight-through
        Gumbel sample carries its gradient)."""
        return [p + mask[:, k : k + 1] * (s - p) for k, (p, s) in enumerate(zip(self.predicted, self.set_to))]

    def features(self, mask: torch.Tensor) -> torch.Tensor:
        probs = [p + mask[:, k : k + 1] * (h - p) for k, (p, h) in enumerate(zip(self.probs, self.one_hot))]
        return policy_features(self.activations(mask), probs, mask)

    def detached(self) -> ConceptReadings:
        return ConceptReadings(
            *([x.detach() for x in xs] for xs in (self.predicted, self.set_to, self.probs, self.one_hot))
        )


def row_task_loss(spec, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``task_loss`` of each row: cross-entropy, or the squared error of a regression."""
    if spec.is_regression:
        return (logits[:, 0] - labels.float()) ** 2
    return F.cross_entropy(logits, labels, reduction="none")


@torch.no_grad()
def imitation_targets(
    model, readings: ConceptReadings, mask: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """``[B]``: for each row, the candidate concept (``candidates`` ``[B, K]``) whose correction, on
    top of ``mask``, gives the lowest task loss, found by trying each one (the label head only).
    A row without a candidate gets 0 (its imitation term is left out)."""
    readings = readings.detached()
    mask = mask.detach()
    losses = torch.full(candidates.shape, float("inf"), device=mask.device)
    for k in range(candidates.shape[1]):
        tried = mask.clone()
        tried[:, k] = 1.0
        logits = model.label_from_concepts(readings.activations(tried))
        losses[:, k] = torch.where(candidates[:, k], row_task_loss(model.spec, logits, labels), losses[:, k])
    return losses.argmin(dim=1)


@dataclass
class Rollout:
    """One step's rollout: the masks μ⁽⁰⁾ (after the n₀ extra draws) … μ⁽ᵀ⁾, the task loss before it
    (``task_losses[0]``, CE(y | RandInt)) and after each step, their weighted sum, and ψ's imitation
    loss and targets."""

    randint: torch.Tensor
    masks: list[torch.Tensor] = field(default_factory=list)
    task_losses: list[torch.Tensor] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    targets: list[torch.Tensor] = field(default_factory=list)
    imitation: torch.Tensor | None = None
    task: torch.Tensor | None = None
    horizon: float = 0.0
    initial: int = 0
    length: int = 0


def published_rollout(model, out, batch: dict, values: torch.Tensor | None, step: int) -> Rollout:
    """The published objective's rollout on one batch whose forward pass ``out`` set the RandInt
    ``values`` (None: none). Draws from torch's generator: n₀, T, the n₀ concepts, the Gumbel noise."""
    c = model.config
    gold, labels = batch["concepts"], batch["labels"]
    device = out.label_logits.device
    gold = gold.to(device)
    known = gold != MISSING
    randint = (values.to(device) != MISSING) if values is not None else torch.zeros_like(known)
    readings = ConceptReadings.of(model, out.concept_states, gold)
    rollout = Rollout(randint=randint, horizon=horizon_limit(step, c.initial_horizon, c.horizon_rate, gold.shape[1]))
    free = known & ~randint
    rollout.initial, rollout.length = draw_rollout(
        rollout.horizon, c.max_horizon, int(free.sum(1).max()) if len(free) else 0
    )
    mask = randint.float()
    if rollout.initial:  # n₀ more of each row's free concepts, uniformly (all of them where it has fewer)
        ranks = (
            torch.rand(free.shape).to(device).masked_fill(~free, -1.0).argsort(dim=1, descending=True).argsort(dim=1)
        )
        mask = torch.where(free & (ranks < rollout.initial), torch.ones_like(mask), mask)
    rollout.masks.append(mask)
    rollout.task_losses.append(task_loss(model.spec, out.label_logits, labels))
    policy = model.learned_policy
    imitation = sum(p.sum() for p in policy.parameters()) * 0.0  # every process's ψ takes part, T = 0 too
    for _ in range(rollout.length):
        candidates = known & (mask.detach() < 0.5)
        has = candidates.any(dim=1)
        scores = policy(readings.features(mask)).masked_fill(~candidates, -1e9)
        target = imitation_targets(model, readings, mask, candidates, labels)
        rollout.targets.append(target)
        if has.any():
            imitation = imitation + F.cross_entropy(scores[has], target[has]) / rollout.length
        chosen = F.gumbel_softmax(scores, tau=1.0, hard=True) * has[:, None].to(scores)
        mask = mask + chosen
        rollout.masks.append(mask)
        rollout.task_losses.append(task_loss(model.spec, model.label_from_concepts(readings.activations(mask)), labels))
    rollout.weights = rollout_weights(rollout.length, c.rollout_discount, c.rollout_losses)
    rollout.task = sum(w * loss for w, loss in zip(rollout.weights, rollout.task_losses))
    rollout.imitation = imitation
    return rollout


@torch.no_grad()
def learned_order(model, states, gold: torch.Tensor | None = None) -> np.ndarray:
    """``[N, K]``: ψ's order, greedily: at each step the highest-scoring concept not yet asked. A
    concept asked is read as set: to ``gold`` where given and known (the published evaluation,
    which feeds ψ the values a person gave), else to the value the model predicts."""
    policy = model.learned_intervention_policy()
    if policy is None:
        raise LucidError(
            f"intervention policy 'learned': this {model.family} model has no learned policy; one is "
            "trained by intervention_objective: published (with intervention_loss_weight > 0, joint mode)"
        )
    device = model.device
    states = [s.to(device) for s in states]
    predicted = torch.stack([logits.argmax(-1) for logits in model.concept_logits_of(states)], dim=1)
    values = predicted if gold is None else torch.where(gold.to(device) != MISSING, gold.to(device), predicted)
    readings = ConceptReadings.of(model, states, values)
    n, k = values.shape
    mask = torch.zeros(n, k, device=device)
    order = []
    with evaluation_mode(policy):
        for _ in range(k):
            scores = policy(readings.features(mask)).masked_fill(mask > 0.5, -float("inf"))
            pick = scores.argmax(dim=1)
            order.append(pick)
            mask[torch.arange(n, device=device), pick] = 1.0
    return torch.stack(order, dim=1).cpu().numpy() if order else np.zeros((n, 0), dtype=np.int64)


# ---- the objectives ---------------------------------------------------------------------------
class InterventionObjective:
    """What ``intervention_loss_weight`` > 0 adds to the joint loss (``intervention_objective``)."""

    def check_config(self, config) -> None:
        """Refuse settings this objective cannot train with."""

    def policy(self, model, config) -> nn.Module | None:
        """The module it trains besides the model's (saved with it), or None."""
        return None

    def training_hooks(self, model) -> TrainingHooks | None:
        return None

    def added_loss(self, model, out, batch: dict, mix, values: torch.Tensor | None) -> torch.Tensor:
        """What the joint loss CE(y | RandInt) + λ·Σ_k CE(c_k) gets added; ``values``: RandInt's."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return next(name for name, objective in INTERVENTION_OBJECTIVES.items() if objective is self)


class SampledHorizon(InterventionObjective):
    """§6.2: w·(T/K)·CE(y | the first T concepts of the fixed policy's order set to gold), one
    T ~ U{1..K} a batch (``auxiliary_losses.intervention_aware_loss``)."""

    def check_config(self, config) -> None:
        if config.intervention_policy == "learned":
            raise LucidError(
                "intervention_policy 'learned' is the policy that intervention_objective 'published' "
                "learns; 'sampled_horizon' follows a fixed one (random, uncertainty, expected_change)"
            )

    def added_loss(self, model, out, batch: dict, mix, values: torch.Tensor | None) -> torch.Tensor:
        return model.config.intervention_loss_weight * intervention_aware_loss(model, out.concept_states, batch, mix)


class StepHooks(TrainingHooks):
    """Gives the model the training step (the horizon grows with it; a resumed run's loop gives the
    step it resumes at)."""

    def __init__(self, model):
        self.model = model

    def before_step(self, step: int) -> None:
        self.model.rollout_step = step


class Published(InterventionObjective):
    """§7.1: IntCEM as published (this module's docstring)."""

    def check_config(self, config) -> None:
        where = "intervention_objective 'published'"
        if config.mode != "joint":
            raise LucidError(
                f"{where}: trains the label through the concepts, in joint mode only; mode is {config.mode!r}"
            )
        if config.intervention_loss_weight <= 0:
            raise LucidError(
                f"{where}: intervention_loss_weight weighs its policy's imitation loss (the released "
                f"code's 5) and turns it on; found {config.intervention_loss_weight!r}"
            )
        if config.intervention_policy == "learned":
            raise LucidError(
                f"{where}: its rollout follows the policy it learns; intervention_policy 'learned' "
                "is that policy after training, not a setting for it"
            )
        if config.rollout_discount <= 0:
            raise LucidError(f"rollout_discount: expected γ > 0, found {config.rollout_discount!r}")
        if config.rollout_losses not in ROLLOUT_LOSSES:
            raise LucidError(f"rollout_losses: expected one of {list(ROLLOUT_LOSSES)}, found {config.rollout_losses!r}")
        if not config.initial_horizon >= 1:
            raise LucidError(f"initial_horizon: expected a number >= 1, found {config.initial_horizon!r}")
        if not config.horizon_rate >= 1:
            raise LucidError(f"horizon_rate: expected a growth factor >= 1, found {config.horizon_rate!r}")
        if not isinstance(config.max_horizon, int) or config.max_horizon < 2:
            raise LucidError(f"max_horizon: expected an integer >= 2 (T < max_horizon), found {config.max_horizon!r}")
        if config.mixup_alpha > 0:
            raise LucidError(f"{where}: not implemented with mixup_alpha > 0")
        if config.intervention_holdout > 0:
            raise LucidError(
                f"{where}: not implemented with intervention_holdout > 0 (the held-out tuning trains "
                "the label head with sampled_horizon's term)"
            )

    def policy(self, model, config) -> nn.Module:
        return InterventionPolicyNet(model.concept_layer.width, [len(c.values) for c in model.spec.concepts])

    def training_hooks(self, model) -> TrainingHooks:
        model.rollout_step = None
        return StepHooks(model)

    def added_loss(self, model, out, batch: dict, mix, values: torch.Tensor | None) -> torch.Tensor:
        """L_pred − CE(y | RandInt) + w·L_imitation: with the joint loss it is L_pred + λ·Σ_k CE(c_k)
        + w·L_imitation, the rollout's task loss replacing the plain one."""
        step = getattr(model, "rollout_step", None)
        if step is None:
            raise LucidError(
                f"intervention_objective 'published': its horizon grows with the training step, which "
                f"the {model.family} family's training hooks do not give it"
            )
        rollout = published_rollout(model, out, batch, values, step)
        return rollout.task - rollout.task_losses[0] + model.config.intervention_loss_weight * rollout.imitation


INTERVENTION_OBJECTIVES.register("sampled_horizon")(SampledHorizon())
INTERVENTION_OBJECTIVES.register("published")(Published())
