"""How a concept bottleneck learns statements without concept labels (docs/methods.md §6.5, §6.8).

A bottleneck's ``concept_objective`` names how its concept layer learns its concepts (the x→c
stage), from ``CONCEPT_OBJECTIVES``:

- ``soft_targets`` (the default; every family, every concept layer): each concept is learnt by
  cross-entropy, to the soft targets p(yes) = σ((s − μ)/σ) of statements scored without labels
  (``data.automatic_concepts``), or to the gold values of human concepts. The scalar layer then
  gives the label layer two logits per statement.
- ``cos3`` (CB-LLM; Sun, Oikarinen, Ustun, Weng, ICLR 2025): the ``statement`` concept layer,
  f(x) = W·h + b ∈ ℝ^|C| (one output per statement), learns the statements' ACC-corrected scores
  S(x) by maximising the cubed cosine similarity of the two vectors (``cos_cubed_similarity``,
  CB-LLM's ``cos_sim_cubed``, after Oikarinen et al., ICLR 2023). Then, with the concept layer
  frozen, each output is standardised with its mean and spread over the training rows and passed
  through a ReLU, a = ReLU((f − μ)/σ) ≥ 0, one activation per statement, and the (sparse) label
  layer reads those |C| activations. CB-LLM trains in two stages: ``mode: sequential`` only.

A ``statement`` concept still has the two values ``no``/``yes`` (``yes``: it fires, a > 0, shown as
p(yes) = σ((f − μ)/σ)), so predictions, metrics, policies and the page work unchanged. Setting it
(an intervention) sets its standardised score z = (f − μ)/σ: ``yes`` to the largest z of the
training rows (the statement's strongest reading in training), ``no`` to the smallest (its
activation is then 0: it does not fire); ``intervene_scores`` sets z to any number, and
``statement_activations`` shows each statement's z and activation for some texts.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import Split, TaskSpec
from ..errors import LucidError
from ..intervene import overwrite_concepts
from ..outputs import InterventionResult
from ..registry import Registry
from .concept_layers import CONCEPT_LAYERS, ConceptLayer
from .losses import concept_loss

CONCEPT_OBJECTIVES: Registry = Registry("concept_objective")
STD_EPS = 1e-6  # added to each output's spread over the training rows (CB-LLM: 1e-12)


def cos_cubed_similarity(features: torch.Tensor, targets: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The cubed cosine similarity of ``features`` and ``targets`` along ``dim``: each vector is
    centred (its mean along ``dim`` subtracted), raised element-wise to the third power and
    L2-normalised, and the similarity is the dot product of the two along ``dim``, one per vector.

    ``dim = -1`` (the default) compares each row, one text's |C| concept outputs with its |C|
    scores: CB-LLM's ``cos_sim_cubed``, whose mean over the batch is its training objective.
    ``dim = 0`` compares each column, one concept over the batch: Oikarinen et al.'s
    ``cos_similarity_cubed_single`` (Label-free CBM)."""
    features, targets = features.float(), targets.float()
    features = features - features.mean(dim, keepdim=True)
    targets = targets - targets.mean(dim, keepdim=True)
    features, targets = F.normalize(features**3, dim=dim), F.normalize(targets**3, dim=dim)
    return (features * targets).sum(dim)


def cos3_loss(features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """CB-LLM's concept loss: −(mean over the batch's rows of the rows' cubed cosine similarity)."""
    return -cos_cubed_similarity(features, targets, dim=-1).mean()


# ---- the concept layer: one output per statement ----------------------------------------------
@CONCEPT_LAYERS.register("statement")
class StatementLayer(ConceptLayer):
    """CB-LLM's concept bottleneck layer: f(x) = W·h + b, one output per statement (concept k's
    state: f_k(x), ``[B, 1]``). Its outputs are standardised by their mean μ_k and spread σ_k over
    the training rows and ReLU'd: the label layer reads a_k = ReLU(z_k), z_k = (f_k − μ_k)/σ_k,
    one activation per statement (``width`` = |C|). The concept logits, what is shown and what
    metrics read, are (0, z_k): p(yes) = σ(z_k), and the statement is ``yes`` when it fires (a_k > 0).

    ``calibrate`` (on the training rows, after the x→c stage; the label layer is fitted after it)
    fits μ, σ and the intervention values: ``yes`` sets z_k to its largest value on those rows,
    ``no`` to its smallest (a_k = 0). Trained by ``concept_objective: cos3`` only."""

    confirming_changes_state = False  # confirming a statement that fires leaves its activation as the text gives it

    def __init__(self, spec: TaskSpec, hidden_size: int, config):
        super().__init__(spec, hidden_size, config)
        two_valued = [c.name for c in spec.concepts if len(c.values) != 2]
        if two_valued:
            raise LucidError(
                f"concept_layer 'statement': one activation per statement needs two-valued concepts (no/yes, "
                f"data.automatic_concepts); {two_valued[0]!r} has {len(spec.concept(two_valued[0]).values)} values"
            )
        k = len(spec.concepts)
        self.linear = nn.Linear(hidden_size, k)
        self.register_buffer("mean", torch.zeros(k))  # μ_k, σ_k of f_k over the training rows
        self.register_buffer("std", torch.ones(k))
        self.register_buffer("low", torch.full((k,), -1.0))  # z_k that ``no`` and ``yes`` set
        self.register_buffer("high", torch.ones(k))

    @property
    def width(self) -> int:
        return len(self.spec.concepts)

    def state(self, k: int, features: torch.Tensor) -> torch.Tensor:
        """f_k(x), ``[B, 1]``, from what statement k reads (``[B, H]``)."""
        return F.linear(features, self.linear.weight[k : k + 1], self.linear.bias[k : k + 1])

    def states(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if all(f is features[0] for f in features):  # a bottleneck: every statement reads the pooled vector
            return tuple(self.linear(features[0]).split(1, dim=-1))
        return tuple(self.state(k, f) for k, f in enumerate(features))

    def scores(self, states) -> list[torch.Tensor]:
        """z_k = (f_k − μ_k)/σ_k, ``[B, 1]`` each."""
        return [(s - self.mean[k]) / self.std[k] for k, s in enumerate(states)]

    def logits(self, states) -> tuple[torch.Tensor, ...]:
        return self.logits_of_scores(self.scores(states))

    @staticmethod
    def logits_of_scores(scores: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.cat([torch.zeros_like(z), z], dim=-1) for z in scores)

    def activations(self, states) -> list[torch.Tensor]:
        return [F.relu(z) for z in self.scores(states)]

    def value_readings(self, states) -> list[torch.Tensor]:
        """A statement's activation is its value (a strength): nothing beside it."""
        return self.activations(states)

    def set_values(self, states, activations: list[torch.Tensor], values: torch.Tensor) -> list[torch.Tensor]:
        """Activations with statement k set to ``values[:, k]`` (0 ``no``, 1 ``yes``; ``MISSING``: kept)."""
        tables = [
            F.relu(torch.stack([self.low[k], self.high[k]])).unsqueeze(-1).to(a) for k, a in enumerate(activations)
        ]
        return overwrite_concepts(activations, values, tables)

    @torch.no_grad()
    def calibrate(self, states, gold: torch.Tensor, momentum: float = 0.0) -> None:
        """μ, σ (standard deviation, unbiased, + ``STD_EPS``) of each output over ``states`` (the
        training rows), and the smallest and largest z there, the values ``no`` and ``yes`` set.
        A running estimate (``momentum`` > 0, joint training's RandInt) does not apply: the layer
        trains in sequential mode only."""
        if momentum > 0:
            return
        raw = torch.cat([s.detach().float() for s in states], dim=-1).to(self.mean.device)
        self.mean.copy_(raw.mean(0))
        self.std.copy_((raw.std(0) if len(raw) > 1 else torch.zeros_like(raw[0])) + STD_EPS)
        z = (raw - self.mean) / self.std
        self.low.copy_(z.min(0).values)
        self.high.copy_(z.max(0).values)


# ---- the objectives ---------------------------------------------------------------------------
class ConceptObjective:
    """How the concept layer learns its concepts in the x→c stage (``concept_objective``)."""

    layer: str | None = None  # the concept layer it trains; None: the config's, scalar by default
    modes: tuple[str, ...] | None = None  # the training modes it allows; None: every mode

    def check_config(self, config) -> None:
        """Resolve ``config.concept_layer`` (None: this objective's layer) and refuse a layer or a
        mode it cannot train."""
        trained_by = {objective.layer: name for name, objective in CONCEPT_OBJECTIVES.items() if objective.layer}
        if config.concept_layer is None:
            config.concept_layer = self.layer or "scalar"
        if self.layer is not None and config.concept_layer != self.layer:
            raise LucidError(
                f"concept_objective {self.name!r} trains one activation per statement (concept_layer "
                f"{self.layer!r}); found concept_layer {config.concept_layer!r}"
            )
        if self.layer is None and config.concept_layer in trained_by:
            raise LucidError(
                f"concept_layer {config.concept_layer!r} is trained by concept_objective "
                f"{trained_by[config.concept_layer]!r}; concept_objective is {self.name!r}"
            )
        if self.modes is not None and config.mode not in self.modes:
            raise LucidError(
                f"concept_objective {self.name!r}: trains the concept layer first, then the label layer on "
                f"its predicted activations (mode: {' or '.join(self.modes)}); found mode {config.mode!r}"
            )

    def check_data(self, split: Split) -> None:
        """Refuse, before training, data this objective cannot learn from."""

    def loss(self, model, output, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def dev_score(self, model, split: Split, batch_size: int = 64) -> float:
        """What selects the x→c stage's epoch on dev (higher is better)."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return next(name for name, objective in CONCEPT_OBJECTIVES.items() if objective is self)


class SoftTargets(ConceptObjective):
    """Σ_k CE(c_k): to the soft targets p(yes) of statements where the data has them, else to the
    gold values (``losses.concept_loss``); dev selects by concept accuracy."""

    def loss(self, model, output, batch: dict) -> torch.Tensor:
        return concept_loss(output.concept_logits, batch["concepts"], batch.get("concept_targets"))

    def dev_score(self, model, split: Split, batch_size: int = 64) -> float:
        return model.evaluate(split, batch_size)["concepts"]["accuracy"]


class CubedCosine(ConceptObjective):
    """CB-LLM: −mean over rows of cos³(f(x), S(x)) (``cos3_loss``), S the statements' scores,
    ACC-corrected (``Split.statement_scores``); dev selects by the mean cos³ similarity to dev's
    corrected scores, as CB-LLM's validation loss does."""

    layer = "statement"
    modes = ("sequential",)

    def check_data(self, split: Split) -> None:
        scores = split.statement_scores
        if scores is None:
            raise LucidError(
                f"{split.source or 'the training data'}: concept_objective 'cos3' learns the statements' "
                "scores; the data has none (give data.automatic_concepts)"
            )

    def loss(self, model, output, batch: dict) -> torch.Tensor:
        return cos3_loss(torch.cat(output.concept_states, dim=-1), batch["statement_scores"])

    def dev_score(self, model, split: Split, batch_size: int = 64) -> float:
        self.check_data(split)
        states = np.concatenate(model.infer(split, batch_size)["concept_states"], axis=1)
        return float(cos_cubed_similarity(torch.from_numpy(states), torch.from_numpy(split.statement_scores)).mean())


CONCEPT_OBJECTIVES.register("soft_targets")(SoftTargets())
CONCEPT_OBJECTIVES.register("cos3")(CubedCosine())


# ---- seeing and setting a statement's activation ------------------------------------------------
def _statement_layer(model) -> StatementLayer:
    layer = getattr(model, "concept_layer", None)
    if not isinstance(layer, StatementLayer):
        raise LucidError(
            "this model's concepts have no single activation each (concept_objective 'cos3' gives them one); "
            "set its concepts to yes/no instead"
        )
    return layer


@torch.no_grad()
def statement_activations(model, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """For a ``cos3`` model: each text's standardised score z ``[N, |C|]`` of every statement and
    its activation ReLU(z), what the label layer reads (columns in ``model.spec.concept_names``)."""
    layer = _statement_layer(model)
    output = model.forward_texts(list(texts))
    z = torch.cat(layer.scores(output.concept_states), dim=-1).cpu().numpy()
    return {"scores": z, "activations": np.maximum(z, 0.0)}


@torch.no_grad()
def intervene_scores(model, texts: Sequence[str] | str, scores: dict[str, float]) -> list[InterventionResult]:
    """For a ``cos3`` model: set statements' standardised scores z to given numbers
    (``{"The food was delicious.": 2.0}``: two training standard deviations above the statement's
    training mean; 0 or less: it does not fire) and recompute the label, without another backbone
    pass. ``after`` shows p(yes) = σ(z) of a statement set so."""
    layer = _statement_layer(model)
    texts = [texts] if isinstance(texts, str) else list(texts)
    names = model.spec.concept_names
    for name, value in scores.items():
        model.spec.concept(name)  # an unknown statement is one clear error
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(value):
            raise LucidError(f"statement {name!r}: expected a number (its standardised score), found {value!r}")
    output = model.forward_texts(texts)
    z = layer.scores(output.concept_states)
    for name, value in scores.items():
        k = names.index(name)
        z[k] = torch.full_like(z[k], float(value))
    after = replace(
        output, label_logits=model.label_from_concepts([F.relu(x) for x in z]), concept_logits=layer.logits_of_scores(z)
    )
    shown = {name: f"{float(value):g}" for name, value in scores.items()}
    return [
        InterventionResult(t, shown, model.to_prediction(t, output, i), model.to_prediction(t, after, i))
        for i, t in enumerate(texts)
    ]
