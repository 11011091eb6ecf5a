"""Concept bottleneck language models (docs/methods.md §1; Tan et al., PAKDD 2024).

text -> backbone -> pooled h -> concept layer (one head per concept) -> concept activations ->
label head -> y. Modes: joint, sequential, independent (the black-box baseline is the
``standard`` family). What the label head reads of a concept, and what an intervention sets it
to, is the concept layer's business (``concept_layers``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..data import MISSING, Split
from ..errors import LucidError
from ..explain import ConceptContribution, Explanation, concept_values_share
from ..explain.tokens import integrated_gradients
from ..intervene import INTERVENTION_POLICIES, ConceptValues, concept_values_tensor, overwrite_concepts
from ..metrics import concept_metrics, selection_score, task_metrics
from ..outputs import InterventionResult, ModelOutput
from ..registry import Registry
from ..training import TrainingConfig
from .auxiliary_losses import counterfactual_loss, random_interventions, side_channel
from .base import ConceptModel, ModelConfig
from .concept_layers import ACTIVATIONS, CONCEPT_LAYERS, VALUE_EMBEDDINGS
from .intcem import INTERVENTION_OBJECTIVES, learned_order
from .label_free import CONCEPT_OBJECTIVES
from .label_head import fit_label_head, tune_label_head
from .losses import Mixup, concept_loss, task_loss

MODES = Registry.choices(
    "mode",
    {
        "joint": "x→c and c→y together: CE(y) + λ·Σ_k CE(c_k)",
        "sequential": "x→c, then c→y on the predicted concepts",
        "independent": "x→c, and c→y on the gold concepts",
    },
)
LABEL_PENALTIES = Registry.choices(
    "label_penalty",
    {
        "l2": "the c→y fit with an L2 penalty, its strength chosen on dev",
        "elastic": "an elastic net along a regularisation path: each class reads few concepts",
    },
)


@dataclass
class BottleneckConfig(ModelConfig):
    mode: str = "joint"
    concept_layer: str | None = (
        None  # a name in concept_layers.CONCEPT_LAYERS; None: the objective's (scalar; cos3: statement)
    )
    # How x→c learns its concepts (label_free.CONCEPT_OBJECTIVES, docs/methods.md §6.5, §6.8): soft_targets,
    # cross-entropy per concept (to statements' soft targets, or to gold values), or cos3, CB-LLM's cubed cosine
    # similarity of one output per statement with the statements' scores (mode: sequential).
    concept_objective: str = "soft_targets"
    concept_loss_weight: float = 1.0  # λ in L = CE(y) + λ·Σ_k CE(c_k) (joint mode)
    concept_activation: str = "logits"  # what the scalar layer's label head reads: logits (docs/methods.md §1) or probs
    concept_embedding_size: int = 16  # m, the embedding layer's size of each value's embedding (CEM's default)
    # What a concept set to a value reads (embedding layer; concept_layers.VALUE_EMBEDDINGS): input, the
    # input's own embedding of the value (CEM); mean, the value's mean embedding over training rows; learned,
    # a vector learned per value. The last two are values the text cannot override.
    value_embedding: str = "input"
    # RandInt (Espinosa Zarlenga et al. 2022): while the label head trains (joint: CE(y);
    # sequential: the c→y fit), each concept is replaced by its *gold* value with this
    # probability, as a user's intervention would, so that corrections are within the head's
    # experience. Default (None): the method's own, 0.25 for concept embeddings (CEM) and 0 for
    # scalar concepts, the plain method of docs/methods.md §1, where the label head reads predicted
    # concepts only. Independent mode reads gold concepts anyway and ignores it.
    random_intervention_rate: float | None = None
    # Intervention-aware training (after IntCEM, Espinosa Zarlenga et al., NeurIPS 2023): each joint
    # step also sets T ~ U{1..K} concepts, chosen by ``intervention_policy``, to gold and adds
    # this weight × T/K × CE(y | intervened), so the label learns to profit from corrections.
    intervention_loss_weight: float = 0.0
    intervention_policy: str = "uncertainty"  # a name in intervene.INTERVENTION_POLICIES
    # Which intervention-aware objective the weight turns on (intcem.INTERVENTION_OBJECTIVES, docs/methods.md
    # §6.2, §7.1): sampled_horizon, the term above (one T ~ U{1..K} a batch, the fixed policy's order, T/K ×
    # CE(y | corrected)), a simplification of IntCEM; or published, IntCEM as published (a learned policy
    # rolled out from random interventions, discounted task losses, imitation; the weight is its policy's).
    intervention_objective: str = "sampled_horizon"
    # published only (the released cem code's defaults): γ on the task loss after t rollout steps; which
    # steps' task losses count (every_step: the paper's; last_step: the released code's default); the
    # horizon H bounding T, initial_horizon × horizon_rate^step up to K + 1, and T < max_horizon.
    rollout_discount: float = 1.1
    rollout_losses: str = "every_step"
    initial_horizon: float = 2.0
    horizon_rate: float = 1.005
    max_horizon: int = 6
    # Counterfactual-consistency training (after Causal Proxy Models, Wu et al. 2023, and
    # interchange-intervention training, Geiger et al. 2022; joint mode, data with human edits of
    # the training texts, CEBaB ``counterfactuals: train_inclusive``): each step also draws
    # ``counterfactual_batch_size`` (original, edit) pairs that changed concept k to b and adds
    # this weight × KL(N(edit) ‖ N(original with k := b)), the edit's side without gradient: the
    # model's own intervention learns to say what the model does on the edited text.
    counterfactual_loss_weight: float = 0.0
    counterfactual_batch_size: int = 8
    # The same pairs, the edit's own gold label as a target: this weight × CE(original with k := b, the
    # edit's label) (edits whose annotators had a majority), so that a correction says what a person who
    # rewrote the text would have been told, not only what the model says of the rewrite.
    counterfactual_label_weight: float = 0.0
    # Intervenability tuning (joint mode; after Laguna et al. 2024, who tune for interventions on
    # held-out data): this share of the training rows is held out of joint training; then the
    # label head alone is tuned on them, RandInt and IntCEM losses included, chosen on dev. The
    # backbone fits its training rows' concepts (about 1% wrong or less, against 8-17% on CEBaB
    # test), so on them a correction changes nothing and the head never learns from one; on
    # held-out rows the predicted concepts are wrong as often as on new text.
    intervention_holdout: float = 0.0
    # Concept-level mixup (C3M, Tan et al. 2024; joint mode): each step mixes every row's pooled
    # vector with another row's of the batch, h = μ·h_i + (1 − μ)·h_π(i), μ ~ Beta(α, α), and both
    # losses alike, μ·L(row i) + (1 − μ)·L(row π(i)); a regulariser for small, partly
    # machine-labelled concept sets. 0: off; C3M's α = 0.4.
    mixup_alpha: float = 0.0
    # A penalised side channel (joint mode): this weight × the mean over rows and labels of
    # Σ_k (w_c,k·(a_k − r_k))², the squared contributions to the label logits of the text beside the
    # values (a_k what the label head reads of concept k, r_k what it would read of k's value alone,
    # the concept layer's ``value_readings``; ``value_and_text_contributions``' text parts, for every
    # label), so that a correction, which replaces a_k, carries more of the decision.
    side_channel_penalty: float = 0.0
    # The c→y fit (sequential, independent; a refit after joint training when elastic): an L2
    # penalty, or an elastic net (``elastic``, l1 share ``label_l1_ratio``) for a sparse label
    # layer in which each class reads few concepts. Its strength is chosen on dev along a path.
    label_penalty: str = "l2"
    label_l1_ratio: float = 0.5
    renamed_keys: ClassVar[dict[str, str]] = {"intervention_rate": "random_intervention_rate"}  # lucidlm ≤ 0.1.0

    def __post_init__(self):
        super().__post_init__()
        if self.mode not in MODES:
            hint = "; the black-box baseline is the 'standard' family" if self.mode == "standard" else ""
            raise LucidError(f"mode: expected one of {list(MODES)}, found {self.mode!r}{hint}")
        CONCEPT_OBJECTIVES.get(self.concept_objective, "concept_objective").check_config(self)  # resolves concept_layer
        layer = CONCEPT_LAYERS.get(self.concept_layer, "concept_layer")
        if self.random_intervention_rate is None:
            self.random_intervention_rate = layer.default_random_intervention_rate
        if not isinstance(self.concept_embedding_size, int) or self.concept_embedding_size < 1:
            raise LucidError(f"concept_embedding_size: expected an integer >= 1, found {self.concept_embedding_size!r}")
        VALUE_EMBEDDINGS.check(self.value_embedding, "value_embedding")
        if self.value_embedding != "input" and not layer.reads_value_embedding:
            raise LucidError(
                f"value_embedding: {self.value_embedding!r} is what the embedding layer's corrected concept "
                f"reads; concept_layer is {self.concept_layer!r}"
            )
        ACTIVATIONS.check(self.concept_activation, "concept_activation")
        INTERVENTION_POLICIES.check(self.intervention_policy, "intervention_policy")
        INTERVENTION_OBJECTIVES.get(self.intervention_objective, "intervention_objective").check_config(self)
        LABEL_PENALTIES.check(self.label_penalty, "label_penalty")
        if not 0.0 < self.label_l1_ratio <= 1.0:
            raise LucidError(f"label_l1_ratio: expected a share in (0, 1], found {self.label_l1_ratio!r}")
        if self.intervention_loss_weight < 0:
            raise LucidError(
                f"intervention_loss_weight: expected a weight >= 0, found {self.intervention_loss_weight!r}"
            )
        if self.counterfactual_loss_weight < 0:
            raise LucidError(
                f"counterfactual_loss_weight: expected a weight >= 0, found {self.counterfactual_loss_weight!r}"
            )
        if self.counterfactual_label_weight < 0:
            raise LucidError(
                f"counterfactual_label_weight: expected a weight >= 0, found {self.counterfactual_label_weight!r}"
            )
        if max(self.counterfactual_loss_weight, self.counterfactual_label_weight) > 0 and self.mode != "joint":
            raise LucidError(
                f"counterfactual_loss_weight: the loss trains the label through the concepts, in joint mode "
                f"only; mode is {self.mode!r}"
            )
        if not isinstance(self.counterfactual_batch_size, int) or self.counterfactual_batch_size < 1:
            raise LucidError(
                f"counterfactual_batch_size: expected an integer >= 1, found {self.counterfactual_batch_size!r}"
            )
        if not 0.0 <= self.intervention_holdout < 1.0:
            raise LucidError(f"intervention_holdout: expected a share in [0, 1), found {self.intervention_holdout!r}")
        if self.intervention_holdout > 0 and self.mode != "joint":
            raise LucidError(f"intervention_holdout: tunes the jointly trained label head; mode is {self.mode!r}")
        if self.intervention_holdout > 0 and self.label_penalty == "elastic":
            raise LucidError(
                "intervention_holdout: tuning the label head by gradient would undo the elastic net's "
                "sparsity; use one of them"
            )
        if self.side_channel_penalty < 0:
            raise LucidError(f"side_channel_penalty: expected a weight >= 0, found {self.side_channel_penalty!r}")
        if self.side_channel_penalty > 0 and self.mode != "joint":
            raise LucidError(
                f"side_channel_penalty: penalises what the jointly trained label reads; mode is {self.mode!r}"
            )
        if self.mixup_alpha < 0:
            raise LucidError(f"mixup_alpha: expected a Beta parameter >= 0 (0: off), found {self.mixup_alpha!r}")
        if self.mixup_alpha > 0 and self.mode != "joint":
            raise LucidError(f"mixup_alpha: mixes the joint loss's rows, in joint mode only; mode is {self.mode!r}")
        if not 0.0 <= self.random_intervention_rate <= 1.0:
            raise LucidError(
                f"random_intervention_rate: expected a probability in [0, 1], found {self.random_intervention_rate!r}"
            )


class ConceptBottleneckLM(ConceptModel):
    family = "bottleneck"
    config_class = BottleneckConfig
    corrections = (ConceptValues,)
    # Checkpoints written before the concept layer was a module of its own: {old prefix: new}.
    legacy_tensor_names: ClassVar[dict[str, str]] = {
        "concept_heads.": "concept_layer.heads.",
        "intervention_table": "concept_layer.intervention_table",
    }

    def __init__(self, config: BottleneckConfig, spec, backbone, tokenizer):
        super().__init__(config, spec, backbone, tokenizer)
        if not spec.concepts:
            raise LucidError(
                f"a {self.family} model needs concepts; the task {spec.name!r} has none "
                "(the 'standard' family needs none)"
            )
        self.concept_layer = CONCEPT_LAYERS.get(config.concept_layer)(spec, self.hidden_size, config)
        self.label_head = nn.Linear(self.concept_layer.width, spec.num_labels)
        # the intervention policy ψ that intervention_objective published learns (None: none; intcem.py)
        self.learned_policy = INTERVENTION_OBJECTIVES.get(config.intervention_objective).policy(self, config)

    def learned_intervention_policy(self) -> nn.Module | None:
        return self.learned_policy

    def summary(self) -> dict:
        c = self.config
        return {
            **super().summary(),
            "mode": c.mode,
            "concept_layer": c.concept_layer,
            "concept_objective": c.concept_objective,
            **({"value_embedding": c.value_embedding} if self.concept_layer.reads_value_embedding else {}),
            "random_intervention_rate": c.random_intervention_rate if c.mode != "independent" else None,
            "intervention_loss_weight": c.intervention_loss_weight,
            "intervention_objective": c.intervention_objective,
            "counterfactual_loss_weight": c.counterfactual_loss_weight,
            "counterfactual_label_weight": c.counterfactual_label_weight,
            "intervention_holdout": c.intervention_holdout,
            "mixup_alpha": c.mixup_alpha,
            "side_channel_penalty": c.side_channel_penalty,
        }

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        concept_values: torch.Tensor | None = None,
        mix: Mixup | None = None,
    ) -> ModelOutput:
        """``concept_values`` (``[B, K]``, ``MISSING`` = keep the prediction) sets concepts before
        the label head reads them: an intervention. ``mix``: training's concept-level mixup of
        the pooled vectors."""
        states, pooled = self.concept_states(input_ids, attention_mask, mix)
        return self.output_of(states, pooled, concept_values)

    def output_of(self, states, pooled: torch.Tensor, concept_values: torch.Tensor | None = None) -> ModelOutput:
        """The forward pass from the concept states on."""
        activations = self.concept_activations(states)
        if concept_values is not None:
            activations = self.set_concepts(states, activations, concept_values)
        return ModelOutput(
            self.label_from_concepts(activations), self.concept_layer.logits(states), pooled, tuple(states)
        )

    def concept_states(
        self, input_ids, attention_mask, mix: Mixup | None = None
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The concept layer's state of each concept, and the pooled vector they read."""
        pooled = Mixup.apply(mix, self.pooled(input_ids, attention_mask))
        features = self.dropout(pooled)
        return self.concept_layer.states([features] * len(self.spec.concepts)), pooled

    def concept_logits_of(self, states) -> tuple[torch.Tensor, ...]:
        return self.concept_layer.logits(states)

    def concept_activations(self, states) -> list[torch.Tensor]:
        return self.concept_layer.activations(states)

    def set_concepts(self, states, activations: list[torch.Tensor], values: torch.Tensor) -> list[torch.Tensor]:
        """Activations with concept k set to ``values[:, k]`` where that is not ``MISSING``."""
        return self.concept_layer.set_values(states, activations, values)

    def concept_value_readings(self, states) -> list[torch.Tensor]:
        return self.concept_layer.value_readings(states)

    def calibrate_interventions(self, states, gold: torch.Tensor, momentum: float = 0.0) -> None:
        self.concept_layer.calibrate(states, gold, momentum)

    @property
    def confirming_changes_state(self) -> bool:
        """Whether a person who confirms a predicted value changes the label (the concept layer's
        ``confirming_changes_state``: concept embeddings and probabilities become certain)."""
        return self.concept_layer.confirming_changes_state

    @staticmethod
    def wrong_values(concept_logits, values: torch.Tensor) -> torch.Tensor:
        """``values`` where the model predicts another value, ``MISSING`` where it predicts them."""
        predicted = torch.stack([logits.argmax(-1) for logits in concept_logits], dim=1).to(values.device)
        return torch.where(values == predicted, torch.full_like(values, MISSING), values)

    def corrections_of(self, concept_logits, values: torch.Tensor) -> torch.Tensor:
        """What a person's statement of ``values`` sets: where confirming the predicted value
        changes nothing the label reads (forced logits: ``confirming_changes_state``), the values
        the model does not already predict; otherwise all of them (one-hot probabilities, concept
        embeddings: a confirmed concept becomes certain)."""
        return values if self.confirming_changes_state else self.wrong_values(concept_logits, values)

    def label_from_concepts(self, activations: list[torch.Tensor]) -> torch.Tensor:
        return self.calibrated(self.label_head(torch.cat(activations, dim=-1)))

    def intervened_activations(self, states, values: torch.Tensor, correct_only: bool = True) -> list[torch.Tensor]:
        """What the label head reads of a batch whose concept states are already computed, with
        concept k of row i set to ``values[i, k]`` (``MISSING``: left as predicted): an intervention
        without another backbone pass (``intervened_label_logits``: the label from it).
        ``correct_only``: as a person's statement sets them (``corrections_of``, as ``intervene``
        does); without it every given value is forced."""
        if correct_only:
            values = self.corrections_of(self.concept_logits_of(states), values)
        return self.set_concepts(states, self.concept_activations(states), values)

    def concept_contribution_matrix(self, activations: list[torch.Tensor], label_rows: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: for row i, label-head weight of label ``label_rows[i]`` × concept k's
        activation, summed over k's values, over the label's temperature; that label's
        (calibrated) logit is the row's sum plus the bias over the temperature."""
        weight = self.label_head.weight[label_rows]  # [B, F]
        sizes = [a.size(-1) for a in activations]
        return self.calibrated(
            torch.stack([(w * a).sum(-1) for w, a in zip(weight.split(sizes, dim=-1), activations)], dim=1)
        )

    # ---- intervention ---------------------------------------------------------------------
    def apply_correction(self, texts: list[str], correction: ConceptValues) -> list[InterventionResult]:
        """Set concepts to given values (``{"service": "Negative"}``) and recompute the label."""
        values = concept_values_tensor(self.spec, correction.values, len(texts))
        output = self.forward_texts(texts)
        with torch.no_grad():
            changed = self.corrections_of(output.concept_logits, values)
            activations = self.set_concepts(
                output.concept_states, self.concept_activations(output.concept_states), changed
            )
            after = replace(output, label_logits=self.label_from_concepts(activations))
            probs = overwrite_concepts(self.concept_probabilities(output.concept_logits), changed)
        return [
            InterventionResult(
                t, dict(correction.values), self.to_prediction(t, output, i), self.to_prediction(t, after, i, probs)
            )
            for i, t in enumerate(texts)
        ]

    def learned_intervention_order(self, states, gold: torch.Tensor | None = None) -> np.ndarray:
        """``[N, K]``: the learned policy's order (``intervention_objective: published``; ``intcem.learned_order``),
        each asked concept read as set to ``gold`` where given, else to its predicted value."""
        return learned_order(self, states, gold)

    # ---- explanation ----------------------------------------------------------------------
    def single_concept_logits(self, input_ids, attention_mask, concept: int) -> torch.Tensor:
        """Concept ``concept``'s logits alone (what its token attributions differentiate)."""
        states, _ = self.concept_states(input_ids, attention_mask)
        return self.concept_logits_of(states[concept : concept + 1])[0]

    def label_attribution_score(self):
        """``(input_ids, attention_mask) -> label logits`` for token attributions, or None."""
        return lambda ids, mask: self(ids, mask).label_logits

    def explain(self, text: str, *, pair: str | None = None, steps: int = 20) -> Explanation:
        """Concepts and their contributions to the predicted label, and integrated-gradients
        token attributions for each concept's predicted value (and for the label)."""
        pairs = [pair] if pair is not None else None
        output = self.forward_texts([text], pairs)
        prediction = self.to_prediction(text, output, 0)
        batch = self.encoder.batch([text], pairs)
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        tokens = []
        for k, concept in enumerate(self.spec.concepts):
            value = concept.index(prediction.concepts[concept.name].value)
            score = lambda i, m, k=k, v=value: self.single_concept_logits(i, m, k).softmax(-1)[:, v]  # noqa: E731
            tokens.append(
                integrated_gradients(self, ids, mask, score, target=concept.name, steps=steps, text=text, pair=pair)
            )
        label_score = self.label_attribution_score()
        if label_score is not None and not self.spec.is_regression:
            c = self.spec.label_index(prediction.label)
            tokens.append(
                integrated_gradients(
                    self,
                    ids,
                    mask,
                    lambda i, m: label_score(i, m).softmax(-1)[:, c],
                    "label",
                    steps,
                    text=text,
                    pair=pair,
                )
            )
        contributions = self.concept_contributions(output, prediction)
        return Explanation(
            text=text,
            text_pair=pair,
            prediction=prediction,
            concepts=contributions,
            tokens=tokens,
            concept_values_share=concept_values_share(contributions),
        )

    def concept_contributions(self, output: ModelOutput, prediction) -> list[ConceptContribution]:
        """Label-head weight × concept activation, summed over each concept's values, for the
        predicted label: its logit is the sum of these plus the head's bias. Each is split into
        the part the concept's value carries and the part the text carries beside it."""
        row = torch.tensor(
            [0 if self.spec.is_regression else self.spec.label_index(prediction.label)], device=self.device
        )
        total, from_values = (
            m[0].tolist() for m in self.value_and_text_contributions([s[:1] for s in output.concept_states], row)
        )
        out = []
        for concept, contribution, from_value in zip(self.spec.concepts, total, from_values):
            value = prediction.concepts[concept.name].value
            split = {} if math.isnan(from_value) else {"from_value": from_value, "from_text": contribution - from_value}
            out.append(
                ConceptContribution(
                    concept.name, value, prediction.concepts[concept.name].probabilities[value], contribution, **split
                )
            )
        return out

    @torch.no_grad()
    def value_and_text_contributions(self, states, label_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[B, K]`` twice: each concept's contribution to label ``label_rows[i]``'s logit, and
        the part of it its value carries (the same weights × ``concept_value_readings``); the
        rest is the text's."""
        return (
            self.concept_contribution_matrix(self.concept_activations(states), label_rows),
            self.concept_contribution_matrix(self.concept_value_readings(states), label_rows),
        )

    # ---- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def infer(self, split: Split, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Label logits, concept logits and probabilities, the concept layer's states, and label
        logits with every gold concept set."""
        self.eval()
        label_logits, concept_logits, states, gold_logits, forced_logits = [], [], [], [], []
        for batch in self.encoder.loader(split, batch_size):
            out = self(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
            label_logits.append(out.label_logits.cpu())
            concept_logits.append([x.cpu() for x in out.concept_logits])
            states.append([x.cpu() for x in out.concept_states])
            gold = batch["concepts"].to(self.device)
            wrong = self.wrong_values(out.concept_logits, gold)
            gold_logits.append(self.intervened_label_logits(out.concept_states, wrong, correct_only=False).cpu())
            forced_logits.append(self.intervened_label_logits(out.concept_states, gold, correct_only=False).cpu())
        result = {"label_logits": torch.cat(label_logits).numpy()}
        result["concept_logits"] = [torch.cat(xs).numpy() for xs in zip(*concept_logits)]
        result["concept_states"] = [torch.cat(xs).numpy() for xs in zip(*states)]
        result["concept_probs"] = [
            p.numpy() for p in self.concept_probabilities([torch.from_numpy(x) for x in result["concept_logits"]])
        ]
        result["gold_concept_label_logits"] = torch.cat(gold_logits).numpy()
        result["forced_concept_label_logits"] = torch.cat(forced_logits).numpy()
        return result

    def evaluate(self, split: Split, batch_size: int = 64) -> dict:
        """Task metrics; concept metrics; task metrics with every concept set to its gold value
        (``task_gold_concepts``: the wrongly predicted ones corrected, the others left as they
        are), and with every concept's activation forced to its gold value, right or wrong
        (``task_forced_concepts``: what is left of the label once concepts carry nothing else)."""
        inferred = self.infer(split, batch_size)
        metrics = self.label_metrics(split, inferred["label_logits"])
        predicted = np.stack([p.argmax(-1) for p in inferred["concept_probs"]], axis=1)
        metrics["concepts"] = concept_metrics(split.concepts, predicted, self.spec.concept_names)
        metrics["task_gold_concepts"] = task_metrics(self.spec, split.labels, inferred["gold_concept_label_logits"])
        metrics["task_forced_concepts"] = task_metrics(self.spec, split.labels, inferred["forced_concept_label_logits"])
        return metrics

    # ---- training: the family's hooks into LucidModel.fit ---------------------------------
    @property
    def objective(self):
        """How the concept layer learns its concepts (``concept_objective``; ``label_free.CONCEPT_OBJECTIVES``)."""
        return CONCEPT_OBJECTIVES.get(self.config.concept_objective, "concept_objective")

    @property
    def trains_label_jointly(self) -> bool:
        """Joint: x→c→y in one loop. Sequential and independent: x→c first, then c→y."""
        return self.config.mode == "joint"

    @property
    def training_stage(self) -> str:
        return self.config.mode if self.trains_label_jointly else "x→c"

    def parameters_outside_training(self) -> list[nn.Parameter]:
        """The x→c stage leaves the label head to the c→y fit."""
        label_head = [] if self.trains_label_jointly else list(self.label_head.parameters())
        return super().parameters_outside_training() + label_head

    def check_training_data(self, train: Split, config: TrainingConfig) -> None:
        if train.concepts.shape[1] != len(self.spec.concepts):
            raise LucidError(f"{train.source}: the data has no concept labels; a {self.family} model needs them")
        self.objective.check_data(train)
        if self.uses_counterfactuals:
            if train.counterfactuals is None:
                raise LucidError(
                    f"{train.source}: counterfactual_loss_weight needs human edits of the training texts "
                    "(CEBaB: data option counterfactuals: train_inclusive)"
                )
            if self.spec.is_regression:
                raise LucidError("counterfactual_loss_weight: compares label distributions; the task is a regression")

    def training_rows(self, train: Split, config: TrainingConfig) -> Split:
        """With ``intervention_holdout``, joint training reads the rest; the held-out rows
        (a seeded draw) wait for the label head's tuning."""
        self._held_out = None
        if self.config.intervention_holdout == 0:
            return train
        order = np.random.default_rng(config.seed).permutation(len(train))
        n = int(round(self.config.intervention_holdout * len(train)))
        if n == 0 or n == len(train):
            raise LucidError(
                f"intervention_holdout {self.config.intervention_holdout}: {len(train)} training rows leave "
                f"{n} to hold out; expected at least one on each side"
            )
        self._held_out = train.select(np.sort(order[:n]))
        return train.select(np.sort(order[n:]))

    def before_training(self, train: Split, config: TrainingConfig) -> None:
        self._counterfactual_rows = None
        if self.uses_counterfactuals:  # tokenised once: each step draws from them
            edits = train.counterfactuals
            if self.config.counterfactual_label_weight > 0 and edits.labels is None:
                raise LucidError(
                    f"{train.source}: counterfactual_label_weight needs the edits' own labels; these edits have none"
                )
            sources = self.encoder.tokenize([train.texts[i] for i in edits.sources])
            labels = torch.from_numpy(edits.labels) if edits.labels is not None else torch.full((len(edits),), MISSING)
            self._counterfactual_rows = (
                sources,
                self.encoder.tokenize(edits.texts),
                torch.from_numpy(edits.concepts),
                torch.from_numpy(edits.values),
                labels,
            )

    def training_hooks(self, steps_per_epoch: int, config: TrainingConfig):
        """The published intervention-aware objective's: its horizon grows with the training step."""
        return INTERVENTION_OBJECTIVES.get(self.config.intervention_objective).training_hooks(self)

    def training_loss(self, forward: nn.Module, batch: dict) -> torch.Tensor:
        """Joint: CE(y) + λ·Σ_k CE(c_k), with RandInt if asked; the x→c stage: Σ_k CE(c_k)."""
        if not self.trains_label_jointly:
            out = forward(batch["input_ids"], batch["attention_mask"])
            return self.objective.loss(self, out, batch)
        mix = Mixup.draw(self.config.mixup_alpha, len(batch["labels"]), batch["labels"].device)
        gold = Mixup.agreed(mix, batch["concepts"])  # a mixed row's gold value: where both rows have it
        values = None
        if self.config.random_intervention_rate > 0:
            values = random_interventions(gold, self.config.random_intervention_rate)
        out = forward(batch["input_ids"], batch["attention_mask"], values, mix)
        if values is not None:  # a running estimate of the forced logits, for the next steps
            self.calibrate_interventions(out.concept_states, gold, momentum=0.9)
        loss = Mixup.loss(
            mix,
            lambda rows: (
                task_loss(self.spec, out.label_logits, rows["labels"])
                + self.config.concept_loss_weight
                * concept_loss(out.concept_logits, rows["concepts"], rows.get("concept_targets"))
            ),
            batch,
        )
        if self.config.intervention_loss_weight > 0:  # sampled_horizon: w·T/K·CE(y | corrected); published: intcem.py
            loss = loss + INTERVENTION_OBJECTIVES.get(self.config.intervention_objective).added_loss(
                self, out, batch, mix, values
            )
        if self.config.side_channel_penalty > 0:
            loss = loss + self.config.side_channel_penalty * side_channel(self, out.concept_states)
        if self.uses_counterfactuals:
            consistency, edit_label = counterfactual_loss(self, forward)
            loss = (
                loss
                + self.config.counterfactual_loss_weight * consistency
                + self.config.counterfactual_label_weight * edit_label
            )
        return loss

    @property
    def uses_counterfactuals(self) -> bool:
        return self.config.counterfactual_loss_weight > 0 or self.config.counterfactual_label_weight > 0

    def dev_score(self, split: Split, batch_size: int = 64) -> float:
        """Joint: the task's selection score; the x→c stage: the concept objective's (soft_targets:
        concept accuracy; cos3: the mean cubed cosine similarity)."""
        if not self.trains_label_jointly:
            return self.objective.dev_score(self, split, batch_size)
        return selection_score(self.evaluate(split, batch_size))

    def after_training(self, train: Split, eval_data: Split | None, config: TrainingConfig, hooks) -> None:
        """Forced intervention logits from the trained model; then, unless joint, c→y on predicted
        (sequential) or gold (independent) concepts, x→c frozen."""
        self.calibrate_on(train, config)
        if not self.trains_label_jointly or self.config.label_penalty == "elastic":
            fit_label_head(self, train, eval_data, gold=(self.config.mode == "independent"), config=config)
        if getattr(self, "_held_out", None) is not None:
            with torch.random.fork_rng(devices=[]):  # its draws start from the seed, whatever training drew
                torch.manual_seed(config.seed)
                tune_label_head(self, self._held_out, eval_data, config)
            self._held_out = None

    def calibrate_on(self, train: Split, config: TrainingConfig) -> None:
        """Forced intervention logits from the trained model's predictions on the training set."""
        states = [torch.from_numpy(x) for x in self.infer(train, config.eval_batch_size)["concept_states"]]
        self.calibrate_interventions(states, torch.from_numpy(train.concepts))

    # ---- persistence ----------------------------------------------------------------------
    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        renamed = {}
        for name, tensor in tensors.items():
            old = next((p for p in self.legacy_tensor_names if name.startswith(p)), None)
            renamed[self.legacy_tensor_names[old] + name[len(old) :] if old else name] = tensor
        means = "concept_layer.value_means"
        if means in self.state_dict() and means not in renamed:  # written before the embedding layer kept them
            renamed[means] = torch.full_like(self.state_dict()[means], float("nan"))  # the value/text split: unknown
        super().load_checkpoint_tensors(renamed)
