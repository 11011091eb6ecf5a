"""SparseCBM: a concept bottleneck whose every concept owns a sparse subnetwork of the backbone
(docs/methods.md §2; Tan, Chen, Zhang, Liu, AAAI 2024).

Concept k's logits come from the backbone run with weights W ⊙ M_k; the label head reads the
concept activations of all K subnetworks (their logits by default, ``concept_activation``). Unlike the published code, each concept really runs
through its own mask, the label reads every concept's pass, and GPT-2's Conv1D layers are masked.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import ClassVar

import torch
import torch.nn.functional as F

from ..backbone import pool
from ..data import Split
from ..errors import LucidError
from ..explain import Explanation
from ..explain.subnetworks import AttentionShape, subnetwork_statistics
from ..intervene import ConceptValues, SubnetworkRewiring
from ..masking import (
    REWIRING_SCORES,
    MaskedLinear,
    differentiable_masks,
    pack_masks,
    rewire,
    routed,
    select_layers,
    unit_groups,
    unpack_masks,
    with_routes,
    wrap_layers,
)
from ..outputs import InterventionResult, SubnetworkInterventionResult
from ..pruning import GRANULARITIES, PRUNING_SCOPES, PRUNING_SCORES, Pruner, SparsitySchedule, density
from ..training import TrainingConfig
from .base import SubnetworkModel
from .bottleneck import BottleneckConfig, ConceptBottleneckLM
from .losses import Mixup

MASK_PREFIX = "subnetwork_masks."


@dataclass
class SparseConfig(BottleneckConfig):
    masked_layers: str = "all"  # all | ffn | attention | top:N
    granularity: str = "weight"  # weight | neuron (whole attention heads and feed-forward neurons)
    sparsity: float = 0.7  # final sparsity of every concept's mask
    initial_sparsity: float = 0.2
    schedule: str = "cubic"  # a name in pruning.SCHEDULES: linear | cubic
    pruning_start: float = 1.0  # epochs: dense before, final sparsity from pruning_end on
    pruning_end: float = 4.0
    pruning_interval: int = 10  # steps between pruning events
    pruning_score: str = "obert"  # a name in pruning.PRUNING_SCORES: obert | magnitude | movement
    pruning_scope: str = "layer"  # layer | global
    # the pruning score's own settings (its ``Options``: obert's gradients m, block B, damp λ)
    pruning_options: dict = field(default_factory=dict)
    # lucidlm ≤ 0.1 kept obert's settings as fields of this config (every saved run wrote them)
    legacy_obert_keys: ClassVar[dict[str, str]] = {
        "obert_gradients": "gradients",
        "obert_block": "block",
        "obert_damp": "damp",
    }

    @classmethod
    def read(cls, options: dict, where: str):
        """Older runs' and configs' ``obert_*`` keys read as ``pruning_options`` when the score is
        obert; other scores never read them, so there they are dropped."""
        options = dict(options)
        legacy = {cls.legacy_obert_keys[k]: options.pop(k) for k in list(options) if k in cls.legacy_obert_keys}
        if legacy and options.get("pruning_score", "obert") == "obert":
            options["pruning_options"] = {**legacy, **(options.get("pruning_options") or {})}
        return super().read(options, where)

    def __post_init__(self):
        super().__post_init__()
        if self.mode != "joint":
            raise LucidError(f"mode: a sparse concept model trains jointly; found {self.mode!r}")
        if (
            self.intervention_objective != "sampled_horizon"
        ):  # its rollouts need the step, which the pruner's hooks hold
            raise LucidError(
                f"intervention_objective: a sparse concept model trains with 'sampled_horizon'; "
                f"found {self.intervention_objective!r}"
            )
        if self.trains_part_of_backbone:  # its subnetworks are masks over the backbone's own weights
            raise LucidError(
                "model.adapter / model.freeze: a sparse concept model prunes the backbone's own weights, "
                "one mask per concept, so the whole backbone trains; use family bottleneck for an adapter"
            )
        GRANULARITIES.check(self.granularity, "granularity")
        PRUNING_SCORES.get(self.pruning_score, "pruning_score").read_options(self.pruning_options)
        PRUNING_SCOPES.check(self.pruning_scope, "pruning_scope")
        if self.granularity == "neuron" and self.pruning_scope != "layer":
            raise LucidError(
                f"pruning_scope: neuron-level masks prune block by block ('layer'), found {self.pruning_scope!r}"
            )
        self.sparsity_schedule()  # validates

    def sparsity_schedule(self) -> SparsitySchedule:
        return SparsitySchedule(
            self.initial_sparsity, self.sparsity, self.pruning_start, self.pruning_end, self.schedule
        )


class SparseConceptLM(ConceptBottleneckLM, SubnetworkModel):
    family = "sparse"
    config_class = SparseConfig
    corrections = (ConceptValues, SubnetworkRewiring)

    def __init__(self, config: SparseConfig, spec, backbone, tokenizer):
        super().__init__(config, spec, backbone, tokenizer)
        self.subnetworks: dict[str, MaskedLinear] = wrap_layers(
            self.backbone, select_layers(self.backbone, config.masked_layers), len(spec.concepts)
        )
        # neuron-level masks: heads and neurons kept whole, gathered in the batched pass
        self.unit_groups = unit_groups(self.backbone, self.subnetworks) if config.granularity == "neuron" else []
        self.pruning_history: list[dict] = []

    @property
    def num_concepts(self) -> int:
        return len(self.spec.concepts)

    # ---- forward ----------------------------------------------------------------------------
    def concept_states(self, input_ids, attention_mask, mix: Mixup | None = None):
        """All K subnetworks in one batched pass; ``pooled`` is ``[K, B, H]``."""
        k = self.num_concepts
        with routed(self.subnetworks, "all"):
            hidden = self.token_states(input_ids.repeat(k, 1), attention_mask.repeat(k, 1))
        pooled = pool(hidden, attention_mask.repeat(k, 1), self.config.pooling).reshape(k, input_ids.shape[0], -1)
        pooled = Mixup.apply(mix, pooled)
        features = self.dropout(pooled)
        return self.concept_layer.states(list(features)), pooled

    def concept_states_one_by_one(self, input_ids, attention_mask):
        """The definition, one subnetwork after another (the reference the batched pass must equal)."""
        states, pooled = [], []
        for k in range(self.num_concepts):
            with routed(self.subnetworks, k):
                pooled.append(self.pooled(input_ids, attention_mask))
            states.append(self.concept_layer.state(k, self.dropout(pooled[-1])))
        return tuple(states), torch.stack(pooled)

    def subnetwork_pooled(self, input_ids, attention_mask, concept: int | None) -> torch.Tensor:
        """The pooled vector through one concept's subnetwork (``None``: the dense backbone)."""
        with routed(self.subnetworks, concept):
            return self.pooled(input_ids, attention_mask)

    # ---- explanation ------------------------------------------------------------------------
    def single_concept_logits(self, input_ids, attention_mask, concept: int) -> torch.Tensor:
        """Through concept ``concept``'s own subnetwork: its token attributions say what *it* reads."""
        state = self.concept_layer.state(
            concept, self.dropout(self.subnetwork_pooled(input_ids, attention_mask, concept))
        )
        return self.concept_logits_of((state,))[0]

    def label_attribution_score(self):
        return None  # the label reads the concepts: its explanation is their contributions

    def subnetwork_statistics(self) -> dict:
        return subnetwork_statistics(self.subnetworks, self.spec.concept_names, AttentionShape.of(self.backbone.config))

    def summary(self) -> dict:
        return {**super().summary(), "sparsity": self.config.sparsity, "granularity": self.config.granularity}

    def explain(self, text: str, *, pair: str | None = None, steps: int = 20) -> Explanation:
        """Three levels: tokens per concept through its subnetwork, the subnetworks, the concepts."""
        explanation = super().explain(text, pair=pair, steps=steps)
        explanation.subnetworks = self.subnetwork_statistics()
        return explanation

    # ---- intervention -----------------------------------------------------------------------
    def apply_correction(self, texts: list[str], correction) -> list[InterventionResult]:
        if isinstance(correction, SubnetworkRewiring):
            return [self.rewire_subnetwork(text, correction) for text in texts]
        return super().apply_correction(texts, correction)

    def rewire_subnetwork(self, text: str, rewiring: SubnetworkRewiring) -> SubnetworkInterventionResult:
        """Rewire concept ``rewiring.concept``'s subnetwork toward its true value for this input.

        With the weights frozen, g = ∂L_k/∂M_k for L_k = CE(concept k, value); every weight is
        scored by the rewiring score (``masking.REWIRING_SCORES``: the paper's s = |g ⊙ W|, or
        the signed ``taylor``); in each masked layer the ``fraction`` of active weights with the
        lowest s are dropped and as many pruned weights with the highest s regrown, so the
        sparsity stays fixed; with neuron-level masks the same is done to whole units, scored by
        the sum of s over their weights. The new mask holds for this input only unless ``commit``;
        for this input the concept shows its rewired probabilities and the label reads the concept
        layer's ``rewired`` state (embeddings: the rewired probabilities over the embeddings from
        before; scalar logits: the rewired logits at the scale of those from before). A committed
        mask is the model's from then on, and ``after`` is its plain forward pass.
        """
        concept, value, fraction, commit = rewiring.concept, rewiring.value, rewiring.fraction, rewiring.commit
        score_of = REWIRING_SCORES.get(rewiring.score, "score")
        k = self.spec.concept_names.index(self.spec.concept(concept).name)
        target = torch.tensor([self.spec.concept(concept).index(value)], device=self.device)
        self.eval()
        batch = self.encoder.batch([text])
        ids, attention = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        reading = {"tokens_read": batch["attention_mask"].sum(1), "tokens_total": batch["tokens_total"]}
        with torch.no_grad():
            before = replace(self(ids, attention), **reading)
        layers = list(self.subnetworks.values())
        with differentiable_masks(layers, k) as masks, torch.enable_grad():
            loss = F.cross_entropy(self.single_concept_logits(ids, attention, k), target)
            grads = torch.autograd.grad(loss, masks)
        old_masks = [layer.mask[k].clone() for layer in layers]
        with torch.no_grad():
            scores = {
                name: score_of(grad, layer.weight) for (name, layer), grad in zip(self.subnetworks.items(), grads)
            }
            self._rewire(k, scores, fraction)
            changed = sum(int((layer.mask[k] != old).sum()) for layer, old in zip(layers, old_masks))
            after = self(ids, attention)
            if not commit:
                for layer, old in zip(layers, old_masks):
                    layer.mask[k] = old
                states = list(after.concept_states)
                states[k] = self.concept_layer.rewired(before.concept_states[k], states[k])
                # the concept shows what its rewired subnetwork says; the label reads ``rewired``
                after = replace(self.output_of(states, after.pooled), concept_logits=after.concept_logits)
        return SubnetworkInterventionResult(
            text=text,
            interventions={concept: value},
            before=self.to_prediction(text, before, 0),
            after=self.to_prediction(text, after, 0),
            concept=concept,
            fraction=fraction,
            score=rewiring.score,
            weights_changed=changed,
            committed=commit,
        )

    def _rewire(self, k: int, scores: dict[str, torch.Tensor], fraction: float) -> None:
        if not self.unit_groups:
            for name, layer in self.subnetworks.items():
                layer.mask[k] = rewire(layer.mask[k], scores[name], fraction)
            return
        scores = {name: score.unsqueeze(0) for name, score in scores.items()}
        for group in self.unit_groups:
            group.set_units(k, rewire(group.unit_masks()[k], group.unit_sums(scores)[0], fraction))

    # ---- masks --------------------------------------------------------------------------------
    def mask_density(self) -> dict[str, float]:
        return dict(zip(self.spec.concept_names, density(self.subnetworks)))

    def checkpoint_options(self) -> dict:
        """Gradient checkpointing recomputes a layer's forward in the backward pass, after the
        routed block has ended: the recompute runs under the routes the forward ran under."""
        layers = self.subnetworks

        def contexts():
            routes = {name: layer.route for name, layer in layers.items()}
            return contextlib.nullcontext(), with_routes(layers, routes)

        return {"context_fn": contexts}

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        tensors = super().checkpoint_tensors()
        for name, layer in self.subnetworks.items():
            tensors[MASK_PREFIX + name] = pack_masks(layer.mask)
        return tensors

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, layer in self.subnetworks.items():
            key = MASK_PREFIX + name
            if key not in tensors:
                raise LucidError(f"checkpoint: the masks of layer {name!r} are missing")
            layer.mask.copy_(unpack_masks(tensors.pop(key), tuple(layer.mask.shape)))
        super().load_checkpoint_tensors(tensors)

    def json_state(self) -> dict:
        return {"pruning_history": self.pruning_history}

    def load_json_state(self, state: dict) -> None:
        self.pruning_history = state.get("pruning_history", [])

    # ---- training: joint, with gradual pruning of every concept's mask (see ``pruning``) --------
    @property
    def training_stage(self) -> str:
        return "sparse"

    def check_training_data(self, train: Split, config: TrainingConfig) -> None:
        super().check_training_data(train, config)
        if config.epochs < self.config.pruning_end:
            raise LucidError(
                f"training.epochs ({config.epochs}) must reach model.pruning_end ({self.config.pruning_end})"
            )

    def training_hooks(self, steps_per_epoch: int, config: TrainingConfig) -> Pruner:
        return Pruner(
            self.subnetworks,
            self.config.sparsity_schedule(),
            steps_per_epoch,
            self.config.pruning_score,
            self.config.pruning_scope,
            self.config.pruning_interval,
            self.config.pruning_options,
            self.unit_groups,
        )

    def after_training(self, train: Split, eval_data: Split | None, config: TrainingConfig, pruner: Pruner) -> None:
        self.pruning_history = pruner.history
        super().after_training(train, eval_data, config, pruner)
