"""Concept layers: what sits between the backbone's pooled vector and the label head of a concept
model. A layer turns each concept's features into its *state* (scalar layer: the concept's
logits; embedding layer: one embedding per value), and from the states gives the concept logits,
what the label head reads of each concept (its activation), and what it reads when a person sets
a concept to a value (an intervention). Model outputs and the evaluation suite carry the states,
so an intervention never needs another backbone pass.

Registered by name (``concept_layer`` in a model config); adding one is one subclass of
``ConceptLayer`` and one ``@CONCEPT_LAYERS.register("name")``, in any module imported before the
config is read. ``tests/test_concept_layers.py`` checks every registered layer against the contract.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import MISSING, TaskSpec
from ..errors import Unsupported
from ..intervene import overwrite_concepts
from ..registry import Registry
from ..training import processes_together, sum_over_processes


class ConceptLayer(nn.Module):
    """The contract of a concept layer. K concepts, concept k with V_k values; B rows.

    A *state* is what the layer keeps of one concept for one forward pass (the scalar layer: its
    logits ``[B, V_k]``; the embedding layer: one embedding per value ``[B, V_k, m]``). Model
    outputs carry the states, so that logits, activations and interventions never need another
    backbone pass.

    Class attributes a layer may set:

    - ``confirming_changes_state``: whether setting a concept to the value it already predicts
      changes what the label reads (a value made certain); when False, a confirmed value is left
      as the text gives it.
    - ``default_random_intervention_rate``: RandInt's rate when a config leaves it unset.
    - ``reads_value_embedding``: whether the config's ``value_embedding`` applies to this layer.
    """

    confirming_changes_state: bool = False
    default_random_intervention_rate: float = 0.0
    reads_value_embedding: bool = False

    def __init__(self, spec: TaskSpec, hidden_size: int, config):
        """``spec``: the task (its concepts and values); ``hidden_size``: the size of what each
        concept reads (the pooled vector, or a subnetwork's); ``config``: the model's config."""
        super().__init__()
        self.spec = spec

    @property
    def width(self) -> int:
        """The size of what the label head reads: the activations' last dimensions, summed."""
        raise NotImplementedError

    def state(self, k: int, features: torch.Tensor) -> torch.Tensor:
        """Concept k's state from what it reads, ``features`` ``[B, H]`` (the same pooled vector for
        every concept of a bottleneck; concept k's subnetwork output for SparseCBM)."""
        raise NotImplementedError

    def states(self, features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """Every concept's state, concept k from ``features[k]``."""
        return tuple(self.state(k, f) for k, f in enumerate(features))

    def logits(self, states) -> tuple[torch.Tensor, ...]:
        """Each concept's logits over its values, ``[B, V_k]``: what is shown and what metrics read."""
        raise NotImplementedError

    def activations(self, states) -> list[torch.Tensor]:
        """What the label head reads of each concept, ``[B, width_k]``; concatenated, ``[B, width]``."""
        raise NotImplementedError

    def set_values(self, states, activations: list[torch.Tensor], values: torch.Tensor) -> list[torch.Tensor]:
        """``activations`` with concept k set to value ``values[:, k]`` where that is not ``MISSING``
        (an intervention): what the label head reads of a concept a person set."""
        raise NotImplementedError

    def value_readings(self, states) -> list[torch.Tensor]:
        """What the label would read of each concept from its value alone, shaped as ``activations``;
        ``activations − value_readings`` is what the text carries beside the values."""
        raise NotImplementedError

    def rewired(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Concept k's state after a subnetwork rewiring changed it from ``before`` to ``after`` for
        one input (SparseCBM): what the label should read of it. ``rewired(s, s)`` is ``s``."""
        raise Unsupported(f"the {type(self).__name__} takes no subnetwork rewiring")

    @torch.no_grad()
    def calibrate(self, states, gold: torch.Tensor, momentum: float = 0.0) -> None:
        """Fit what the layer estimates from training rows (forced logits, value means), from their
        ``states`` and ``gold`` values ``[B, K]``; ``momentum`` > 0 moves part of the way (a running
        estimate, called every training step on each process's share). Default: nothing to fit."""


CONCEPT_LAYERS: Registry = Registry("concept_layer", base=ConceptLayer)
ACTIVATIONS = Registry.choices(
    "concept_activation",
    {
        "logits": "the label head reads each concept's logits",
        "probs": "the label head reads each concept's probabilities",
    },
)
# What a concept set to value v reads in the embedding layer (``value_embedding``): the input's own
# embedding of v (CEM as published), the mean of that embedding over the training rows whose
# gold value is v, or a vector learned for v; the last two do not depend on the text.
VALUE_EMBEDDINGS = Registry.choices(
    "value_embedding",
    {
        "input": "the input's own embedding of the value (CEM as published)",
        "mean": "the value's mean embedding over the training rows whose gold value it is",
        "learned": "a vector learned for the value",
    },
)


@torch.no_grad()
def update_value_means(
    table: torch.Tensor, samples: Sequence[tuple[torch.Tensor, torch.Tensor]], momentum: float
) -> None:
    """Move ``table[k, v]`` (``[K, V, d]``) toward the mean of the vectors of concept k's samples
    of value v: ``samples[k]`` is (values ``[N]``, vectors ``[N, d_k]``). A value without a sample
    keeps its row. With several processes while training (``momentum`` > 0), the means are over
    the samples of all processes (sums and counts added), so every process keeps the same table."""
    sums = torch.zeros(table.shape, dtype=torch.float64, device=table.device)
    counts = torch.zeros(table.shape[:2], dtype=torch.float64, device=table.device)
    for k, (values, vectors) in enumerate(samples):
        values, vectors = values.to(table.device), vectors.detach().to(sums)
        sums[k, :, : vectors.shape[1]].index_add_(0, values, vectors)
        counts[k] += torch.bincount(values, minlength=table.shape[1]).to(counts)
    if momentum > 0 and processes_together() > 1:
        totals = sum_over_processes(torch.cat([sums.flatten(), counts.flatten()])).to(table.device)
        sums, counts = totals[: sums.numel()].view(sums.shape), totals[sums.numel() :].view(counts.shape)
    seen = counts > 0
    means = (sums / counts.clamp(min=1).unsqueeze(-1)).to(table)
    table[seen] = momentum * table[seen] + (1 - momentum) * means[seen]


@CONCEPT_LAYERS.register("scalar")
class ScalarConceptLayer(ConceptLayer):
    """One linear head per concept (docs/methods.md §1); the label head reads each concept's logits (or,
    with ``concept_activation: probs``, its probabilities).

    An intervention sets concept k to value v by forcing its logits to the mean logits of the
    training rows whose concept k is v and predicted v: a typical, correctly recognised v, which
    the label head knows how to read (``calibrate``). (The 5th/95th-percentile rule of Koh et al.
    2020, made for binary concepts, gives extreme vectors that a softmax concept never shows.)
    With probabilities, an intervention is one-hot.
    """

    def __init__(self, spec: TaskSpec, hidden_size: int, config):
        super().__init__(spec, hidden_size, config)
        self.activation = config.concept_activation
        self.heads = nn.ModuleList(nn.Linear(hidden_size, len(c.values)) for c in spec.concepts)
        # Row v of table k: the activation that sets concept k to value v.
        width = max(len(c.values) for c in spec.concepts)
        table = torch.zeros(len(spec.concepts), width, width)
        for k, c in enumerate(spec.concepts):
            eye = torch.eye(len(c.values))
            table[k, : len(c.values), : len(c.values)] = eye if self.activation == "probs" else 5.0 * (2 * eye - 1)
        self.register_buffer("intervention_table", table)

    @property
    def width(self) -> int:
        """The size of what the label head reads."""
        return sum(len(c.values) for c in self.spec.concepts)

    @property
    def confirming_changes_state(self) -> bool:
        """Whether setting a concept to the value it already predicts changes what the label reads.
        Forced logits are a typical reading of the value, not a surer one: a person who confirms
        the prediction leaves the input's own logits as they are. One-hot probabilities are the
        value with certainty, which the prediction may lack."""
        return self.activation == "probs"

    def state(self, k: int, features: torch.Tensor) -> torch.Tensor:
        """Concept k's logits."""
        return self.heads[k](features)

    def logits(self, states) -> tuple[torch.Tensor, ...]:
        return tuple(states)

    def activations(self, states) -> list[torch.Tensor]:
        if self.activation == "probs":
            return [logits.softmax(-1) for logits in states]
        return list(states)

    def set_values(self, states, activations: list[torch.Tensor], values: torch.Tensor) -> list[torch.Tensor]:
        """Activations with concept k set to ``values[:, k]`` where that is not ``MISSING``."""
        tables = [
            self.intervention_table[k, : len(c.values), : len(c.values)] for k, c in enumerate(self.spec.concepts)
        ]
        return overwrite_concepts(activations, values, tables)

    def rewired(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """What the label reads of concept k after a subnetwork rewiring changed its logits from
        ``before`` to ``after`` for one input (SparseCBM). With ``probs`` the rewired probabilities.
        With ``logits`` the label head reads the logits themselves, and a rewiring, which only
        minimises the concept's loss, drives them past the range the head was trained on (CEBaB,
        sparsity 0.7, taylor 0.1: label accuracy on the rewired rows fell 56.5% -> 41.5%; read
        this way 55.5%, bench/results/cebab_sparse.md). So the label reads the rewired logits
        about the mean of those from before, with at most their spread (max - min): the value
        they favour and their order are the rewiring's, their scale the input's."""
        if self.activation == "probs":
            return after

        def spread(logits):
            return logits.amax(-1, keepdim=True) - logits.amin(-1, keepdim=True)

        scale = (spread(before) / spread(after).clamp(min=1e-6)).clamp(max=1.0)
        return before.mean(-1, keepdim=True) + scale * (after - after.mean(-1, keepdim=True))

    @torch.no_grad()
    def calibrate(self, states, gold: torch.Tensor, momentum: float = 0.0) -> None:
        """Forced logits of value v := mean of the concept logits over rows whose gold and
        predicted value are v (training data). ``momentum`` > 0 moves them only part of the way
        (the running estimate used while training); a value with no such row keeps its vector.

        The running estimate is called by every process at every training step, each on its share
        of the global batch: with several processes the means are over the rows of all shares
        (sums and counts added over the processes), so that every process keeps the same table,
        the one a single process computes on the whole batch."""
        if self.activation == "probs":
            return
        if momentum > 0 and processes_together() > 1:
            self._calibrate_over_processes(states, gold, momentum)
            return
        for k, logits in enumerate(states):
            logits = logits.detach().float()
            recognised = gold[:, k].to(logits.device) == logits.argmax(-1)
            for v in range(logits.shape[1]):
                rows = recognised & (logits.argmax(-1) == v)
                if rows.any():
                    current = self.intervention_table[k, v, : logits.shape[1]]
                    current.copy_(momentum * current + (1 - momentum) * logits[rows].mean(0).to(current))

    def _calibrate_over_processes(self, states, gold: torch.Tensor, momentum: float) -> None:
        samples = []
        for k, logits in enumerate(states):
            predicted = logits.detach().argmax(-1)
            recognised = gold[:, k].to(predicted.device) == predicted
            samples.append((predicted[recognised], logits[recognised]))
        update_value_means(self.intervention_table, samples, momentum)

    def value_readings(self, states) -> list[torch.Tensor]:
        """What the label would read of each concept from its value alone: the forced logits of
        each value mixed by the concept's probabilities (with ``probs``, the probabilities
        themselves: an activation is all value)."""
        out = []
        for k, logits in enumerate(states):
            probs = logits.softmax(-1)
            table = self.intervention_table[k, : logits.shape[-1], : logits.shape[-1]]
            out.append(probs if self.activation == "probs" else probs @ table)
        return out


@CONCEPT_LAYERS.register("embedding")
class EmbeddingConceptLayer(ConceptLayer):
    """Concept Embedding Models (docs/methods.md §6; Espinosa Zarlenga et al., NeurIPS 2022).

    For concept k and each of its values v, an embedding e_kv = LeakyReLU(W_kv·h + b_kv) of size
    m (concept k's state: ``[B, V_k, m]``); probabilities p_k = softmax_v ψ(e_kv), ψ one scoring
    layer shared by every concept; the label head reads the mixed embeddings ĉ_k = Σ_v p_kv·e_kv.
    An intervention sets p_k to the one-hot of the given value: ĉ_k = e_kv (``value_embedding:
    input``). The label can thus carry more than the concept values (the embeddings) and still
    obey a correction; but e_kv(x) still carries the text, which can outvote the correction.
    ``value_embedding: mean`` sets ĉ_k to μ_kv, the mean of e_kv over the training rows whose
    gold value is v (a running estimate while training, as RandInt and IntCEM set concepts; the
    training set's at the end), ``learned`` to a vector learned for v: values the text cannot
    override.

    Setting a concept to the value it already predicts also makes p_k one-hot: a person who
    confirms the value removes the concept's uncertainty, as the paper's interventions do and as
    RandInt and IntCEM train the label head to read (they set the chosen concepts, right or wrong).
    """

    confirming_changes_state = True
    default_random_intervention_rate = 0.25
    reads_value_embedding = True

    def __init__(self, spec: TaskSpec, hidden_size: int, config):
        super().__init__(spec, hidden_size, config)
        self.size = config.concept_embedding_size
        self.value_embedding = config.value_embedding
        # all of concept k's value embeddings in one matrix: [H] -> [V_k · m]
        self.embedders = nn.ModuleList(nn.Linear(hidden_size, len(c.values) * self.size) for c in spec.concepts)
        self.score = nn.Linear(self.size, 1)  # ψ
        width = max(len(c.values) for c in spec.concepts)
        # μ_kv, kept whatever ``value_embedding`` is: what a value carries without the text (``value_readings``)
        self.register_buffer("value_means", torch.zeros(len(spec.concepts), width, self.size))
        if self.value_embedding == "learned":
            self.value_vectors = nn.Parameter(0.1 * torch.randn(len(spec.concepts), width, self.size))

    @property
    def width(self) -> int:
        return len(self.spec.concepts) * self.size

    def value_table(self, k: int) -> torch.Tensor:
        """``[V_k, m]``: what concept k set to each value reads, without the text (learned
        vectors, or the value means)."""
        table = self.value_vectors if self.value_embedding == "learned" else self.value_means
        return table[k, : len(self.spec.concepts[k].values)]

    def state(self, k: int, features: torch.Tensor) -> torch.Tensor:
        embeddings = F.leaky_relu(self.embedders[k](features))
        return embeddings.view(features.shape[0], len(self.spec.concepts[k].values), self.size)

    def logits(self, states) -> tuple[torch.Tensor, ...]:
        return tuple(self.score(embeddings).squeeze(-1) for embeddings in states)

    def activations(self, states) -> list[torch.Tensor]:
        return [
            (logits.softmax(-1).unsqueeze(-1) * embeddings).sum(1)
            for logits, embeddings in zip(self.logits(states), states)
        ]

    def set_values(self, states, activations: list[torch.Tensor], values: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for k, (activation, embeddings) in enumerate(zip(activations, states)):
            value = values[:, k].to(activation.device)
            if self.value_embedding == "input":
                chosen = embeddings[torch.arange(len(value), device=value.device), value.clamp(min=0)]
            else:
                chosen = self.value_table(k)[value.clamp(min=0)].to(activation)
            out.append(torch.where((value == MISSING).unsqueeze(-1), activation, chosen))
        return out

    def value_readings(self, states) -> list[torch.Tensor]:
        """What the label would read of each concept from its value alone: the value table's rows
        (``value_table``) mixed by the concept's probabilities, Σ_v p_kv·μ_kv; the rest of ĉ_k is
        what the text carries beside the value."""
        return [logits.softmax(-1) @ self.value_table(k).to(logits) for k, logits in enumerate(self.logits(states))]

    def rewired(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """Concept k's state after a subnetwork rewiring changed it from ``before`` to ``after``
        for one input (SparseCBM). A rewiring minimises the concept's loss: what it corrects is the
        concept's probabilities. It also moves every value's embedding, which no objective asked
        for and which carries what the text says beyond the concept; so the label reads the
        rewired probabilities mixing the embeddings from before, as a value intervention reads
        the input's own embedding of the value. As a state: each embedding from before moved
        along ψ's weight w by (δ_v + c)/|w|², with δ_v the logit change ψ(after_v) − ψ(before_v)
        and c = −Σ_v p'_v·δ_v: ψ then gives the rewired logits + c (the same probabilities p') and
        the moves cancel in the mixture, Σ_v p'_v·state_v = Σ_v p'_v·before_v."""
        logits = self.score(after).squeeze(-1)
        shift = logits - self.score(before).squeeze(-1)
        shift = shift - (logits.softmax(-1) * shift).sum(-1, keepdim=True)
        w = self.score.weight[0]
        return before + shift.unsqueeze(-1) * (w / w.dot(w))

    @torch.no_grad()
    def calibrate(self, states, gold: torch.Tensor, momentum: float = 0.0) -> None:
        """μ_kv := the mean of e_kv over the rows whose gold value of concept k is v (``momentum``
        > 0: part of the way, the running estimate while training)."""
        samples = []
        for k, embeddings in enumerate(states):
            value = gold[:, k].to(embeddings.device)
            rows = torch.nonzero(value != MISSING).squeeze(1)
            samples.append((value[rows], embeddings[rows, value[rows]]))
        update_value_means(self.value_means, samples, momentum)
