"""SparseCBM: a concept bottleneck whose every concept owns a sparse subnetwork of the backbone
(METHODS §2; Tan, Chen, Zhang, Liu, AAAI 2024).

Concept k's logits come from the backbone run with weights W ⊙ M_k; the label head reads the
concept probabilities of all K subnetworks. Unlike the published code, each concept really runs
through its own mask, the label reads every concept's pass, and GPT-2's Conv1D layers are masked.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..backbone import pool
from ..data import Split
from ..errors import LucidError
from ..masking import MaskedLinear, pack_masks, routed, select_layers, unpack_masks, wrap_layers
from ..pruning import Pruner, SparsitySchedule, density
from ..training import TrainingConfig, fit_loop, set_seed
from ..evaluation import selection_score
from .bottleneck import BottleneckConfig, ConceptBottleneckLM

MASK_PREFIX = "subnetwork_masks."


@dataclass
class SparseConfig(BottleneckConfig):
    masked_layers: str = "all"  # all | ffn | attention | top:N
    sparsity: float = 0.7  # final sparsity of every concept's mask
    initial_sparsity: float = 0.2
    schedule: str = "cubic"  # linear | cubic
    pruning_start: float = 1.0  # epochs: dense before, final sparsity from pruning_end on
    pruning_end: float = 4.0
    pruning_interval: int = 10  # steps between pruning events
    pruning_score: str = "obert"  # obert | magnitude | movement
    pruning_scope: str = "layer"  # layer | global
    obert_gradients: int = 20  # m
    obert_block: int = 20  # B
    obert_damp: float = 1e-7  # λ

    def __post_init__(self):
        super().__post_init__()
        if self.mode != "joint":
            raise LucidError(f"mode: a sparse concept model trains jointly; found {self.mode!r}")
        self.sparsity_schedule()  # validates

    def sparsity_schedule(self) -> SparsitySchedule:
        return SparsitySchedule(self.initial_sparsity, self.sparsity, self.pruning_start, self.pruning_end, self.schedule)


class SparseConceptLM(ConceptBottleneckLM):
    family = "sparse"
    config_class = SparseConfig

    def __init__(self, config: SparseConfig, spec, backbone, tokenizer):
        super().__init__(config, spec, backbone, tokenizer)
        self.subnetworks: dict[str, MaskedLinear] = wrap_layers(
            self.backbone, select_layers(self.backbone, config.masked_layers), len(spec.concepts)
        )
        self.pruning_history: list[dict] = []

    @property
    def num_concepts(self) -> int:
        return len(self.spec.concepts)

    # ---- forward ----------------------------------------------------------------------------
    def concept_logits(self, input_ids, attention_mask):
        """All K subnetworks in one batched pass; ``pooled`` is ``[K, B, H]``."""
        k = self.num_concepts
        with routed(self.subnetworks, "all"):
            hidden = self.backbone(input_ids=input_ids.repeat(k, 1), attention_mask=attention_mask.repeat(k, 1)).last_hidden_state
        pooled = pool(hidden, attention_mask.repeat(k, 1), self.config.pooling).reshape(k, input_ids.shape[0], -1)
        features = self.dropout(pooled)
        return tuple(head(features[i]) for i, head in enumerate(self.concept_heads)), pooled

    def concept_logits_one_by_one(self, input_ids, attention_mask):
        """The definition, one subnetwork after another (the reference the batched pass must equal)."""
        logits, pooled = [], []
        for k, head in enumerate(self.concept_heads):
            with routed(self.subnetworks, k):
                pooled.append(self.pooled(input_ids, attention_mask))
            logits.append(head(self.dropout(pooled[-1])))
        return tuple(logits), torch.stack(pooled)

    def subnetwork_pooled(self, input_ids, attention_mask, concept: int | None) -> torch.Tensor:
        """The pooled vector through one concept's subnetwork (``None``: the dense backbone)."""
        with routed(self.subnetworks, concept):
            return self.pooled(input_ids, attention_mask)

    # ---- masks --------------------------------------------------------------------------------
    def mask_density(self) -> dict[str, float]:
        return dict(zip(self.spec.concept_names, density(self.subnetworks)))

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

    # ---- training -----------------------------------------------------------------------------
    def fit(self, train: Split, eval_data: Split | None = None, config: TrainingConfig | None = None, **overrides):
        """Joint training with gradual pruning of every concept's mask (see ``pruning``)."""
        config = replace(config or TrainingConfig(), **overrides)
        if config.epochs < self.config.pruning_end:
            raise LucidError(f"training.epochs ({config.epochs}) must reach model.pruning_end ({self.config.pruning_end})")
        set_seed(config.seed)
        loader = self.encoder.loader(train, config.batch_size, shuffle=True, seed=config.seed)
        pruner = Pruner(self.subnetworks, self.config.sparsity_schedule(), len(loader), self.config.pruning_score,
                        self.config.pruning_scope, self.config.pruning_interval, self.config.obert_gradients,
                        self.config.obert_block, self.config.obert_damp)
        dev_score = (lambda m: selection_score(m.evaluate(eval_data, config.eval_batch_size))) if eval_data else None
        self.training_history = fit_loop(self, self._param_groups(config), loader, self._loss("joint"), dev_score,
                                         config, desc="sparse", hooks=pruner)
        self.pruning_history = pruner.history
        return self
