"""Gradual pruning of the per-concept masks during joint training (docs/methods.md §2).

Schedule: dense until ``start`` (epochs), then sparsity rises from ``initial`` to ``final``
(linear, or cubic as in Zhu & Gupta 2017) until ``end``, then stays at ``final``. Every
``interval`` steps in between, each concept's mask drops its lowest-scoring *active* weights,
per layer or globally, so pruned weights stay pruned.

Scores for concept k read the gradient of concept k's loss (+ the task loss) with respect to
its own masked weights W ⊙ M_k, which the batched pass provides:
- ``magnitude``: |w| (the same for every concept: it cannot tell subnetworks apart);
- ``movement``: −Σ_t w·g accumulated over steps (Sanh et al. 2020);
- ``obert``: w² / (2·[F⁻¹]_jj), F = λI + (1/m)Σ g gᵀ the empirical Fisher of the last m
  gradients in blocks of B consecutive weights, inverted by Sherman–Morrison (Kurtic et al. 2022).

With neuron-level masks (``groups``) whole units are pruned: a unit's score is the sum of its
weights' scores (for oBERT, the single-weight saliencies, ignoring correlations between the
weights of a unit), and each block keeps the counts of ``units_to_keep``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import psutil
import torch

from .config import from_dict
from .errors import LucidError
from .masking import MaskedLinear, UnitGroup, units_to_keep
from .registry import Registry
from .training import TrainingHooks, mean_over_processes

# (initial, final, progress in [0, 1] through the pruning epochs) -> sparsity
SCHEDULES: Registry = Registry("schedule")
PRUNING_SCOPES = Registry.choices(
    "pruning_scope",
    {
        "layer": "the lowest scores of each layer are pruned",
        "global": "the lowest scores of the whole backbone are pruned",
    },
)
GRANULARITIES = Registry.choices(
    "granularity",
    {
        "weight": "single weights",
        "neuron": "whole attention heads and feed-forward neurons",
    },
)


@SCHEDULES.register("linear")
def linear_schedule(initial: float, final: float, progress: float) -> float:
    return initial + (final - initial) * progress


@SCHEDULES.register("cubic")
def cubic_schedule(initial: float, final: float, progress: float) -> float:
    """Fast at first, slow near the end (Zhu & Gupta 2017)."""
    return final + (initial - final) * (1 - progress) ** 3


@dataclass
class SparsitySchedule:
    initial: float = 0.2
    final: float = 0.7
    start: float = 1.0  # epoch at which pruning starts (dense before)
    end: float = 5.0  # epoch at which final sparsity is reached
    kind: str = "cubic"

    def __post_init__(self):
        SCHEDULES.check(self.kind, "schedule")
        if not 0 <= self.initial <= self.final < 1:
            raise LucidError(f"sparsity: expected 0 <= initial ({self.initial}) <= final ({self.final}) < 1")
        if not 0 <= self.start <= self.end:
            raise LucidError(f"pruning epochs: expected 0 <= start ({self.start}) <= end ({self.end})")

    def at(self, epoch: float) -> float:
        """Target sparsity at a (fractional) epoch."""
        if epoch < self.start:
            return 0.0
        if epoch >= self.end or self.end == self.start:
            return self.final
        progress = (epoch - self.start) / (self.end - self.start)
        return SCHEDULES.get(self.kind)(self.initial, self.final, progress)


def obert_inverse_diagonal(gradients: torch.Tensor, block: int, damp: float) -> torch.Tensor:
    """diag(F⁻¹) for F = λI + (1/m)Σ_i g_i g_iᵀ, block-diagonal in blocks of ``block`` weights.

    ``gradients``: ``[m, n]`` (n weights, flattened). Each block's inverse starts at I/λ and takes
    one exact Sherman–Morrison update per gradient: F⁻¹ ← F⁻¹ − (F⁻¹g)(F⁻¹g)ᵀ / (m + gᵀF⁻¹g).
    Computed in float64: with λ = 1e-7 the entries span many orders of magnitude.
    """
    m, n = gradients.shape
    pad = (-n) % block
    g = torch.nn.functional.pad(gradients.double(), (0, pad)).reshape(m, -1, block)  # [m, blocks, B]
    inverse = torch.eye(block, dtype=torch.float64).repeat(g.shape[1], 1, 1) / damp
    for i in range(m):
        gi = g[i].unsqueeze(-1)  # [blocks, B, 1]
        fg = inverse @ gi
        inverse -= (fg @ fg.transpose(1, 2)) / (m + (gi.transpose(1, 2) @ fg))
    return inverse.diagonal(dim1=1, dim2=2).reshape(-1)[:n].float()


@dataclass
class NoOptions:
    pass


class PruningScore:
    """How one pruning score watches training and scores weights; the ``Pruner`` asks it which
    steps it needs concept gradients at, hands them over, and prunes by its scores. ``Options``:
    its settings, a dataclass (a config's ``pruning_options``)."""

    Options: ClassVar[type] = NoOptions

    def __init__(self, pruner: Pruner, options=None):
        self.pruner = pruner
        self.options = self.Options() if options is None else options

    @classmethod
    def read_options(cls, given: dict | None) -> object:
        """Its ``Options`` from a config's ``pruning_options``; an unknown key is refused by name."""
        return from_dict(cls.Options, given or {}, "pruning_options")

    def needs_gradients(self, step: int) -> bool:
        return False

    def observe(self, name: str, layer: MaskedLinear, grad: torch.Tensor) -> None:
        """``grad``: ``[K, *weight.shape]``, each concept's loss gradient through its own mask."""

    def scores(self, name: str, layer: MaskedLinear) -> torch.Tensor:
        """``[K, *weight.shape]``: higher = more worth keeping."""
        raise NotImplementedError

    def pruned(self) -> None:
        """Called after every pruning event."""

    def state(self) -> dict[str, torch.Tensor]:
        """What a training checkpoint keeps of the score's accumulated evidence."""
        return {}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


PRUNING_SCORES: Registry = Registry("pruning_score", base=PruningScore)


@PRUNING_SCORES.register("magnitude")
class MagnitudeScore(PruningScore):
    """|w|, the same for every concept: it cannot tell subnetworks apart."""

    def scores(self, name, layer):
        return layer.weight.detach().abs().unsqueeze(0).expand_as(layer.mask).float()


@PRUNING_SCORES.register("movement")
class MovementScore(PruningScore):
    """−Σ_t w·g, accumulated from one interval before the first event (Sanh et al. 2020)."""

    def __init__(self, pruner, options=None):
        super().__init__(pruner, options)
        self.movement = {n: torch.zeros_like(layer.mask, dtype=torch.float32) for n, layer in pruner.layers.items()}

    def needs_gradients(self, step):
        events = self.pruner.events
        return events[0] - self.pruner.interval <= step < events[-1]

    def observe(self, name, layer, grad):
        self.movement[name] -= (layer.weight.detach().unsqueeze(0) * grad).float()

    def scores(self, name, layer):
        return self.movement[name].clone()

    def state(self):
        return {f"movement.{n}": m for n, m in self.movement.items()}

    def load_state(self, tensors):
        for n in self.movement:
            self.movement[n] = tensors[f"movement.{n}"].to(self.movement[n].device)


@dataclass
class OBertOptions:
    gradients: int = 20  # m: the gradients before each event that the Fisher is estimated from
    block: int = 20  # B: the Fisher's block size
    damp: float = 1e-7  # λ


@PRUNING_SCORES.register("obert")
class OBertScore(PruningScore):
    """w² / (2·[F⁻¹]_jj) from the m gradients before each event (docs/methods.md §2; Kurtic et al. 2022);
    |w| when no gradient was seen."""

    Options = OBertOptions

    def __init__(self, pruner, options=None):
        super().__init__(pruner, options)
        self.gradients: dict[str, list[torch.Tensor]] = {n: [] for n in pruner.layers}
        # Its m gradients of every concept's masked weights are kept in host memory until the
        # next pruning event: refused, in one line, where they would not fit.
        needed = sum(
            self.options.gradients * layer.mask.numel() * layer.weight.element_size()
            for layer in pruner.layers.values()
        )
        available = psutil.virtual_memory().available
        if needed > available:
            raise LucidError(
                f"pruning_score: obert keeps {self.options.gradients} gradients of every concept's masked weights, "
                f"{needed / 2**30:.1f} GiB here, and this machine has {available / 2**30:.1f} GiB free; use "
                "pruning_score: movement or magnitude (O(parameters)), or fewer pruning_options.gradients"
            )

    def needs_gradients(self, step):
        return any(0 <= event - 1 - step < self.options.gradients for event in self.pruner.events)

    def observe(self, name, layer, grad):
        self.gradients[name] = (self.gradients[name] + [grad.detach().cpu()])[-self.options.gradients :]

    def scores(self, name, layer):
        if not self.gradients[name]:
            return MagnitudeScore.scores(self, name, layer)
        weight = layer.weight.detach()
        grads = torch.stack(self.gradients[name])  # [m, K, *shape]
        out = torch.empty(layer.mask.shape)
        for k in range(layer.num_masks):
            diag = obert_inverse_diagonal(
                grads[:, k].reshape(grads.shape[0], -1), self.options.block, self.options.damp
            )
            out[k] = (weight.float().cpu() ** 2 / (2 * diag.reshape(weight.shape).clamp_min(1e-30))).to(out.dtype)
        return out.to(weight.device)

    def pruned(self):
        self.gradients = {n: [] for n in self.gradients}

    def state(self):
        return {f"gradients.{n}.{i}": g for n, gs in self.gradients.items() for i, g in enumerate(gs)}

    def load_state(self, tensors):
        for n in self.gradients:
            self.gradients[n] = []
            while f"gradients.{n}.{len(self.gradients[n])}" in tensors:
                self.gradients[n].append(tensors[f"gradients.{n}.{len(self.gradients[n])}"])


class Pruner(TrainingHooks):
    """Scores and prunes the masks of ``layers`` while ``fit_loop`` trains (its ``hooks``)."""

    def __init__(
        self,
        layers: dict[str, MaskedLinear],
        schedule: SparsitySchedule,
        steps_per_epoch: int,
        score: str = "obert",
        scope: str = "layer",
        interval: int = 10,
        score_options: dict | None = None,
        groups: list[UnitGroup] | None = None,
    ):
        score_class = PRUNING_SCORES.get(score, "pruning_score")
        PRUNING_SCOPES.check(scope, "pruning_scope")
        if groups and scope != "layer":
            raise LucidError(f"pruning_scope: neuron-level masks prune block by block ('layer'), found {scope!r}")
        self.layers, self.schedule, self.steps_per_epoch, self.groups = layers, schedule, steps_per_epoch, groups
        self.scope, self.interval = scope, max(1, interval)
        start, end = (round(e * steps_per_epoch) for e in (schedule.start, schedule.end))
        # prune at start, every `interval` steps, and once more at end (final sparsity)
        self.events = sorted(set(range(start, end, self.interval)) | {end})
        self.score = score_class(self, score_class.read_options(score_options))
        self.history: list[dict] = []

    # ---- hooks called by fit_loop -----------------------------------------------------------
    def before_step(self, step: int) -> None:
        record = self._needs_gradients(step)
        for layer in self.layers.values():
            layer.record_grads = record
            layer.masked_weight = None

    def after_backward(self, step: int) -> None:
        if not self._needs_gradients(step):
            return
        for name, layer in self.layers.items():
            grad = layer.concept_gradients()
            if grad is not None:  # a process's gradients are of its share of the batch: averaged, as DDP does
                self.score.observe(name, layer, mean_over_processes(grad))
        for layer in self.layers.values():
            layer.masked_weight = None

    def after_step(self, step: int) -> None:
        if step + 1 in self.events:  # after `step + 1` optimizer steps
            # The last event applies the final sparsity exactly: its step is ``end`` epochs rounded
            # to a whole step, which may fall short of ``end`` (and of the schedule's final value).
            last = step + 1 == self.events[-1]
            self.prune(self.schedule.final if last else self.schedule.at((step + 1) / self.steps_per_epoch))

    def selectable(self, epoch: int) -> bool:
        """Only checkpoints at final sparsity may be chosen as the best one."""
        return epoch >= self.schedule.end

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """The score's evidence and the pruning history (the masks are the model's)."""
        return {f"score.{k}": v for k, v in self.score.state().items()}, {"history": self.history}

    def load_state(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        self.score.load_state({k[len("score.") :]: v for k, v in tensors.items() if k.startswith("score.")})
        self.history = state["history"]

    # ---- scores and masks -------------------------------------------------------------------
    def _needs_gradients(self, step: int) -> bool:
        return bool(self.events) and self.score.needs_gradients(step)

    def scores(self, name: str) -> torch.Tensor:
        """``[K, *weight.shape]``: higher = more worth keeping."""
        return self.score.scores(name, self.layers[name])

    @torch.no_grad()
    def prune(self, sparsity: float) -> None:
        """Set every concept's mask to the top (1 − sparsity) of its active weights by score."""
        if self.groups:
            self._prune_units(sparsity)
            return
        scores = {n: self.scores(n).masked_fill(~layer.mask, -math.inf) for n, layer in self.layers.items()}
        num_masks = next(iter(self.layers.values())).num_masks
        for k in range(num_masks):
            if self.scope == "layer":
                for name, layer in self.layers.items():
                    layer.mask[k] = _top(scores[name][k], sparsity)
            else:
                flat = torch.cat([scores[n][k].reshape(-1) for n in self.layers])
                keep = _top(flat, sparsity)
                offset = 0
                for name, layer in self.layers.items():  # noqa: B007
                    size = layer.mask[k].numel()
                    layer.mask[k] = keep[offset : offset + size].reshape(layer.mask[k].shape)
                    offset += size
        self._record(sparsity)

    def _prune_units(self, sparsity: float) -> None:
        """Keep every concept's ``units_to_keep`` best units of each group (pruned units score -inf)."""
        scores = {n: self.scores(n) for n in self.layers}
        for group, keep in zip(self.groups, units_to_keep(self.groups, sparsity)):
            unit_scores = group.unit_sums(scores).masked_fill(~group.unit_masks(), -math.inf)
            for k in range(unit_scores.shape[0]):
                group.set_units(k, _keep_top(unit_scores[k], keep))
        self._record(sparsity)

    def _record(self, sparsity: float) -> None:
        self.history.append({"sparsity": sparsity, "density": density(self.layers)})
        self.score.pruned()


def _top(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A boolean mask keeping the round((1 − sparsity)·n) highest scores (never a -inf one)."""
    return _keep_top(scores, round((1 - sparsity) * scores.numel()))


def _keep_top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if keep > 0:
        mask[torch.topk(scores.reshape(-1), keep).indices] = True
    return mask.reshape(scores.shape) & torch.isfinite(scores)


def density(layers: dict[str, MaskedLinear]) -> list[float]:
    """Fraction of weights each concept keeps, over all masked layers."""
    kept = sum(layer.mask.reshape(layer.num_masks, -1).sum(1).double() for layer in layers.values())
    total = sum(layer.mask[0].numel() for layer in layers.values())
    return (kept / total).tolist()
