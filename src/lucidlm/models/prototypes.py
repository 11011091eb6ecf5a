"""Prototype language models, proto-lm (docs/methods.md §3; Xie, Vosoughi, Hassanpour, Findings of EMNLP 2023).

text -> backbone hidden states h_t -> token attention α -> S = Σ_t α_t h_t -> distances to P
learned prototypes -> similarities 1 / (‖S − p_j‖ + ε) -> Linear(P -> C) -> y.

Each prototype belongs to one class (P/C per class). After training, a projection pass over the
training data shows each prototype as its nearest training examples; a prediction is explained by
its most similar prototypes, their pull toward each class, and the token attention α.

Where the released code is wrong (docs/methods.md §5) this module does the intent: cohesion and
separation act on distances with the signs that pull toward own-class prototypes and push away
from the others; the token attention never attends to padding; nothing is tied to a device;
model selection reads dev only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..data import Split
from ..errors import LucidError
from ..explain import Explanation, PrototypeMatch, TrainingExample
from ..explain.tokens import integrated_gradients, token_attribution
from ..metrics import selection_score
from ..outputs import ModelOutput
from ..registry import Registry
from ..training import TrainingConfig
from .base import ModelConfig, PrototypeModel, trainable_groups
from .losses import task_loss

PROJECTIONS = Registry.choices(
    "projection",
    {
        "soft": "each prototype moved part of the way toward its nearest training example",
        "hard": "each prototype replaced by its nearest training example",
    },
)
OWN_CLASS_WEIGHT, OTHER_CLASS_WEIGHT = 1.0, -0.5  # the label head's start (docs/methods.md §3)
TOP_TOKENS = 3  # attended tokens shown for each of a prototype's nearest training examples


@dataclass
class PrototypeConfig(ModelConfig):
    """proto-lm's settings. ``pooling`` is not used: the token attention replaces it."""

    prototypes_per_class: int = 10  # P/C; a regression task has this many prototypes in all
    task_loss_weight: float = 1.0  # λ0: cross-entropy, or MSE for regression
    cohesion_weight: float = 0.05  # λ1: mean distance to the K farthest own-class prototypes
    separation_weight: float = 1.0  # λ2: mean similarity to the K nearest other-class prototypes
    cohesion_separation_ratio: float = 0.5  # K = ratio × P/C (at least 1)
    epsilon: float = 1e-4  # sim = 1 / (d + ε): a similarity never exceeds 1/ε
    attention_size: int | None = None  # width of the token attention's layer W; None: the hidden size
    nearest_examples: int = 5  # training examples kept for each prototype by the projection
    projection: str = "soft"  # soft: record nearest examples; hard: also move each prototype onto its nearest

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.prototypes_per_class, int) or self.prototypes_per_class < 1:
            raise LucidError(f"prototypes_per_class: expected an integer >= 1, found {self.prototypes_per_class!r}")
        for name in ("task_loss_weight", "cohesion_weight", "separation_weight"):
            if getattr(self, name) < 0:
                raise LucidError(f"{name}: expected a weight >= 0, found {getattr(self, name)!r}")
        if not 0 < self.cohesion_separation_ratio <= 1:
            raise LucidError(
                f"cohesion_separation_ratio: expected a number in (0, 1], found {self.cohesion_separation_ratio!r}"
            )
        if self.epsilon <= 0:
            raise LucidError(f"epsilon: expected a number > 0, found {self.epsilon!r}")
        if self.attention_size is not None and (not isinstance(self.attention_size, int) or self.attention_size < 1):
            raise LucidError(f"attention_size: expected an integer >= 1 or null, found {self.attention_size!r}")
        if not isinstance(self.nearest_examples, int) or self.nearest_examples < 1:
            raise LucidError(f"nearest_examples: expected an integer >= 1, found {self.nearest_examples!r}")
        PROJECTIONS.check(self.projection, "projection")


@dataclass
class PrototypeOutput(ModelOutput):
    """A forward pass: ``pooled`` is the attention-pooled S ``[B, H]``; distances and similarities
    to every prototype are ``[B, P]``; ``token_attention`` is α ``[B, T]`` (0 on padding)."""

    prototype_distances: torch.Tensor | None = None
    prototype_similarity: torch.Tensor | None = None
    token_attention: torch.Tensor | None = None


@dataclass
class PrototypeProjection:
    """What projection found: for each prototype, its nearest training examples, nearest first.
    ``metrics_before`` / ``metrics_after``: the eval data's metrics around a hard projection."""

    examples: list[list[TrainingExample]]
    hard: bool
    own_class: bool
    metrics_before: dict | None = None
    metrics_after: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PrototypeProjection:
        examples = [[TrainingExample(**e) for e in nearest] for nearest in d["examples"]]
        return cls(**{**d, "examples": examples})


# ---- the math, one function each ----------------------------------------------------------
class TokenAttention(nn.Module):
    """u_t = tanh(W h_t + b), α = softmax_t(u_tᵀ w) over real tokens, S = Σ_t α_t h_t.

    Dropout applies to the attention's input only, never to the pooled S: scaling S would
    distort the distances the prototypes are measured by.
    """

    def __init__(self, hidden_size: int, attention_size: int, dropout: float):
        super().__init__()
        self.project = nn.Linear(hidden_size, attention_size)
        # Small enough that the first α is near uniform: training starts from mean pooling.
        self.context = nn.Parameter(torch.randn(attention_size) / math.sqrt(attention_size))
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = torch.tanh(self.project(self.dropout(hidden))) @ self.context  # [B, T]
        scores = scores.masked_fill(attention_mask == 0, torch.finfo(scores.dtype).min)
        attention = scores.softmax(dim=-1)  # exactly 0 on padding
        return torch.einsum("bt,bth->bh", attention, hidden), attention


def prototype_distances(pooled: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """‖S_i − p_j‖₂ for every pair, ``[B, P]``, as ‖S‖² − 2 S·p + ‖p‖²: one matmul and no
    ``[B, P, H]`` tensor. The clamp keeps the square root's gradient finite at distance 0."""
    squared = pooled.pow(2).sum(-1, keepdim=True) - 2 * pooled @ prototypes.T + prototypes.pow(2).sum(-1)
    return squared.clamp_min(1e-12).sqrt()


def cohesion_loss(distances: torch.Tensor, own: torch.Tensor, k: int) -> torch.Tensor:
    """Mean distance from each example to its K *least* similar (farthest) own-class prototypes.
    Minimising it pulls examples and their class's prototypes together; it is >= 0, so it is
    bounded and cannot be gamed by moving anything without limit."""
    farthest_own = distances.masked_fill(~own, -float("inf")).topk(k, dim=1).values
    return farthest_own.mean()


def separation_loss(distances: torch.Tensor, own: torch.Tensor, k: int, epsilon: float) -> torch.Tensor:
    """Mean similarity 1 / (d + ε) of each example to its K *most* similar (nearest) other-class
    prototypes. Minimising it pushes them apart; it is bounded below by 0 and its pull fades as
    1/d², so growing distances without bound earns ever less (unlike −d, which it could game)."""
    nearest_other = distances.masked_fill(own, float("inf")).topk(k, dim=1, largest=False).values
    return (1.0 / (nearest_other + epsilon)).mean()


# ---- the model ----------------------------------------------------------------------------
class PrototypeLM(PrototypeModel):
    family = "prototype"
    config_class = PrototypeConfig

    def __init__(self, config: PrototypeConfig, spec, backbone, tokenizer):
        super().__init__(config, spec, backbone, tokenizer)
        groups = 1 if spec.is_regression else len(spec.classes)  # regression: one group owns all
        num_prototypes = groups * config.prototypes_per_class
        self.token_attention = TokenAttention(
            self.hidden_size, config.attention_size or self.hidden_size, config.dropout
        )
        # Placeholders: ``fit`` starts them from training examples (``initialize_from_data``).
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, self.hidden_size))
        self.register_buffer(
            "prototype_class", torch.arange(num_prototypes) // config.prototypes_per_class, persistent=False
        )
        self.label_head = nn.Linear(num_prototypes, spec.num_labels)
        self._initialize_label_head()
        self.projection: PrototypeProjection | None = None
        self._warm_start = False  # fit(warm_start=True) keeps the prototypes as they are

    def _initialize_label_head(self) -> None:
        """+1 from a class's own prototypes, −0.5 from the others (docs/methods.md §3); zero bias.
        Regression has no class to favour: zero weights (the bias is set from the data by
        ``initialize_from_data``)."""
        with torch.no_grad():
            self.label_head.bias.zero_()
            if self.spec.is_regression:
                self.label_head.weight.zero_()
                return
            own = self.prototype_class[None, :] == torch.arange(self.spec.num_labels)[:, None]  # [C, P]
            self.label_head.weight.copy_(torch.where(own, OWN_CLASS_WEIGHT, OTHER_CLASS_WEIGHT))

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.size(0)

    @property
    def cohesion_separation_k(self) -> int:
        return max(1, round(self.config.cohesion_separation_ratio * self.config.prototypes_per_class))

    def prototype_class_name(self, j: int) -> str | None:
        return None if self.spec.is_regression else self.spec.classes[int(self.prototype_class[j])]

    def own_prototypes(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B, P]``: True where prototype j belongs to example i's class (regression: every one)."""
        if self.spec.is_regression:
            return torch.ones(labels.size(0), self.num_prototypes, dtype=torch.bool, device=labels.device)
        return self.prototype_class[None, :] == labels[:, None]

    # ---- forward ------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> PrototypeOutput:
        return self.head(self.token_states(input_ids, attention_mask), attention_mask)

    def head(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> PrototypeOutput:
        """Everything after the backbone: attention pooling, prototype similarities, label logits."""
        pooled, attention = self.token_attention(hidden, attention_mask)
        distances = prototype_distances(pooled, self.prototypes)
        similarity = 1.0 / (distances + self.config.epsilon)
        return PrototypeOutput(
            self.calibrated(self.label_head(similarity)),
            pooled=pooled,
            prototype_distances=distances,
            prototype_similarity=similarity,
            token_attention=attention,
        )

    def loss(self, output: PrototypeOutput, labels: torch.Tensor) -> torch.Tensor:
        """λ0·task loss + λ1·cohesion + λ2·separation (no separation for regression)."""
        config, k = self.config, self.cohesion_separation_k
        own = self.own_prototypes(labels)
        total = config.task_loss_weight * task_loss(self.spec, output.label_logits, labels)
        if config.cohesion_weight:
            total = total + config.cohesion_weight * cohesion_loss(output.prototype_distances, own, k)
        if config.separation_weight and not self.spec.is_regression:
            total = total + config.separation_weight * separation_loss(
                output.prototype_distances, own, k, config.epsilon
            )
        return total

    # ---- inference ----------------------------------------------------------------------
    @torch.no_grad()
    def outputs(self, split: Split, batch_size: int = 64):
        """(batch, forward pass) over a split, in order, in eval mode (training truncation applies)."""
        self.eval()
        for batch in self.encoder.loader(split, batch_size):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            yield batch, self(batch["input_ids"], batch["attention_mask"])

    def infer(self, split: Split, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Label logits ``[N, C]`` and attention-pooled vectors S ``[N, H]`` of a split."""
        logits, pooled = [], []
        for _, out in self.outputs(split, batch_size):
            logits.append(out.label_logits.cpu())
            pooled.append(out.pooled.cpu())
        return {"label_logits": torch.cat(logits).numpy(), "pooled": torch.cat(pooled).numpy()}

    # ---- training -----------------------------------------------------------------------
    def fit(
        self,
        train: Split,
        eval_data: Split | None = None,
        config: TrainingConfig | None = None,
        warm_start: bool = False,
        **overrides,
    ):
        """Start the prototypes from training examples (kept as they are with ``warm_start``),
        train everything, choose the epoch on ``eval_data`` (dev, never test), then project."""
        self._warm_start = warm_start
        return super().fit(train, eval_data, config, **overrides)

    @property
    def training_stage(self) -> str:
        return "proto-lm"

    def before_training(self, train: Split, config: TrainingConfig) -> None:
        if not self._warm_start:
            self.initialize_from_data(train, seed=config.seed, batch_size=config.eval_batch_size)

    def training_loss(self, forward, batch: dict) -> torch.Tensor:
        return self.loss(forward(batch["input_ids"], batch["attention_mask"]), batch["labels"])

    def after_training(self, train: Split, eval_data: Split | None, config: TrainingConfig, hooks) -> None:
        self.project(
            train, hard=self.config.projection == "hard", eval_data=eval_data, batch_size=config.eval_batch_size
        )

    def param_groups(self, config: TrainingConfig) -> list[dict]:
        return trainable_groups(
            [
                {"params": list(self.backbone.parameters()), "lr": config.learning_rate},
                {"params": list(self.token_attention.parameters()), "lr": config.head_learning_rate},
                # No weight decay: it would shrink the prototypes toward the origin and wear the
                # +1/−0.5 class weights down for no reason of the data's.
                {
                    "params": [self.prototypes, *self.label_head.parameters()],
                    "lr": config.head_learning_rate,
                    "weight_decay": 0.0,
                },
            ]
        )

    @torch.no_grad()
    def initialize_from_data(self, train: Split, seed: int = 0, batch_size: int = 64) -> None:
        """Each class's P/C prototypes start at the pooled S of as many training examples of that
        class, drawn at random (seeded, without replacement while the class has enough; repeats
        get a small seeded jitter so that no two prototypes stay identical). Regression: the
        prototypes come from any examples, and the label head starts at the mean target."""
        rng = np.random.default_rng(seed)
        generator = torch.Generator().manual_seed(seed)
        per_class = self.config.prototypes_per_class
        chosen, repeated = [], []
        for group in range(self.num_prototypes // per_class):  # one draw per class
            members = np.arange(len(train)) if self.spec.is_regression else np.flatnonzero(train.labels == group)
            if len(members) == 0:
                raise LucidError(
                    f"{train.source}: no training example of class {self.spec.classes[group]!r}; "
                    "each class's prototypes start from its own examples"
                )
            chosen += rng.choice(members, per_class, replace=len(members) < per_class).tolist()
            repeated += [len(members) < per_class] * per_class
        pooled = torch.from_numpy(self.infer(train.select(chosen), batch_size)["pooled"])
        jitter = 1e-2 * pooled.std() * torch.randn(pooled.shape, generator=generator)
        pooled = torch.where(torch.tensor(repeated)[:, None], pooled + jitter, pooled)
        self.prototypes.copy_(pooled.to(self.prototypes.device))
        if self.spec.is_regression:
            self.label_head.bias.fill_(float(np.mean(train.labels)))

    # ---- projection ---------------------------------------------------------------------
    @torch.no_grad()
    def project(
        self,
        train: Split,
        hard: bool = False,
        n_nearest: int | None = None,
        eval_data: Split | None = None,
        batch_size: int = 64,
    ) -> PrototypeProjection:
        """Find each prototype's nearest training examples (of its own class, as ProtoPNet projects;
        any example for regression) in one pass, with their distances and most attended tokens.

        ``hard``: then move each prototype onto its nearest example's S, and find the nearest
        examples of the moved prototypes again; ``eval_data``'s metrics are recorded before and after.
        """
        n = n_nearest or self.config.nearest_examples
        if not isinstance(n, int) or n < 1:
            raise LucidError(f"n_nearest: expected an integer >= 1, found {n!r}")
        own_class = not self.spec.is_regression
        before = self.evaluate(eval_data, batch_size) if eval_data is not None and hard else None
        indices, distances = self.nearest_training_examples(train, n, own_class, batch_size)
        if hard:
            if (indices[0] < 0).any():
                raise LucidError(f"{train.source}: hard projection needs an example of every prototype's class")
            nearest = train.select(indices[0].tolist())
            self.prototypes.copy_(torch.from_numpy(self.infer(nearest, batch_size)["pooled"]).to(self.device))
            indices, distances = self.nearest_training_examples(train, n, own_class, batch_size)
        after = self.evaluate(eval_data, batch_size) if eval_data is not None and hard else None
        self.projection = PrototypeProjection(
            self._training_examples(train, indices, distances, batch_size),
            hard,
            own_class,
            before,
            after,
        )
        self.training_history.append(
            {
                "stage": "projection",
                "hard": hard,
                **({"eval_score_before": selection_score(before)} if before else {}),
                **({"eval_score_after": selection_score(after)} if after else {}),
            }
        )
        return self.projection

    def nearest_training_examples(
        self, train: Split, n: int, own_class: bool = True, batch_size: int = 64
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n, P]`` indices into ``train`` and distances, nearest first, kept as a running top-n
        over one pass. Where a class has fewer than n examples the rest are index −1, distance inf."""
        best_distances = torch.full((n, self.num_prototypes), float("inf"))
        best_indices = torch.full((n, self.num_prototypes), -1, dtype=torch.long)
        offset = 0
        for batch, out in self.outputs(train, batch_size):
            distances = out.prototype_distances.cpu()
            if own_class:
                distances = distances.masked_fill(~self.own_prototypes(batch["labels"]).cpu(), float("inf"))
            rows = torch.arange(offset, offset + len(distances))[:, None].expand_as(distances)
            offset += len(distances)
            candidates = torch.cat([best_distances, distances])
            best_distances, position = candidates.topk(n, dim=0, largest=False)
            best_indices = torch.cat([best_indices, rows]).gather(0, position)
        best_indices[best_distances.isinf()] = -1
        return best_indices, best_distances

    def _training_examples(
        self, train: Split, indices: torch.Tensor, distances: torch.Tensor, batch_size: int
    ) -> list[list[TrainingExample]]:
        found = sorted({int(i) for i in indices.flatten() if i >= 0})
        top_tokens = dict(zip(found, self.most_attended_tokens(train.select(found), batch_size)))
        examples = []
        for j in range(self.num_prototypes):
            examples.append(
                [
                    TrainingExample(
                        text=train.texts[i],
                        distance=float(d),
                        label=self._label_name(train.labels[i]),
                        top_tokens=top_tokens[i],
                        text_pair=train.text_pairs[i] if train.text_pairs else None,
                    )
                    for i, d in zip(indices[:, j].tolist(), distances[:, j].tolist())
                    if i >= 0
                ]
            )
        return examples

    def most_attended_tokens(self, split: Split, batch_size: int = 64, k: int = TOP_TOKENS) -> list[list[str]]:
        """Each row's k most attended tokens, most attended first; special tokens left out."""
        special = torch.tensor(sorted(self.tokenizer.all_special_ids))
        result = []
        for batch, out in self.outputs(split, batch_size):
            ids = batch["input_ids"].cpu()
            attention = out.token_attention.cpu().masked_fill(torch.isin(ids, special), -1.0)
            top = attention.topk(min(k, attention.size(1)), dim=1)
            for row_ids, row_scores, row_positions in zip(ids, top.values, top.indices):
                kept = row_positions[row_scores > 0]  # padding and special tokens score −1 or 0
                result.append(self.tokenizer.convert_ids_to_tokens(row_ids[kept].tolist()))
        return result

    def _label_name(self, label) -> str | float:
        return float(label) if self.spec.is_regression else self.spec.classes[int(label)]

    # ---- explanation --------------------------------------------------------------------
    def summary(self) -> dict:
        return {**super().summary(), "prototypes_per_class": self.config.prototypes_per_class}

    def explain(self, text: str, *, pair: str | None = None, top_k: int = 3, steps: int = 20) -> Explanation:
        """The prediction, its ``top_k`` most similar prototypes (similarity, similarity × class
        weight for each class, nearest training examples), integrated-gradients token attributions
        of the predicted class's probability (computed from the prototype similarities), and the
        token attention α."""
        if not isinstance(top_k, int) or top_k < 1:
            raise LucidError(f"top_k: expected an integer >= 1, found {top_k!r}")
        pairs = [pair] if pair is not None else None
        output = self.forward_texts([text], pairs)
        similarity = output.prototype_similarity[0]
        contributions = self.calibrated(
            similarity[:, None] * self.label_head.weight.detach().T
        )  # [P, C], as the logits
        class_names = [self.spec.label] if self.spec.is_regression else list(self.spec.classes)
        prototypes = [
            PrototypeMatch(
                prototype=j,
                prototype_class=self.prototype_class_name(j),
                similarity=float(similarity[j]),
                contributions=dict(zip(class_names, contributions[j].tolist())),
                nearest_examples=list(self.projection.examples[j]) if self.projection else [],
            )
            for j in similarity.topk(min(top_k, self.num_prototypes)).indices.tolist()
        ]
        batch = self.encoder.batch([text], pairs)
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        prediction = self.to_prediction(text, output, 0)
        tokens = []
        if not self.spec.is_regression:  # through the prototype similarities, as the label reads them
            label = self.spec.label_index(prediction.label)
            tokens.append(
                integrated_gradients(
                    self,
                    ids,
                    mask,
                    lambda i, m: self(i, m).label_logits.softmax(-1)[:, label],
                    "label",
                    steps,
                    text=text,
                    pair=pair,
                )
            )
        # α pools the states; it is not an attribution of the label (bench/results/evaluation_suite.md scores both)
        tokens.append(
            token_attribution(
                self.tokenizer,
                ids[0].tolist(),
                output.token_attention[0].tolist(),
                "attention",
                "attention",
                text,
                pair,
            )
        )
        return Explanation(text=text, text_pair=pair, prediction=prediction, tokens=tokens, prototypes=prototypes)

    # ---- persistence --------------------------------------------------------------------
    def json_state(self) -> dict:
        return {"projection": self.projection.to_dict()} if self.projection else {}

    def load_json_state(self, state: dict) -> None:
        self.projection = PrototypeProjection.from_dict(state["projection"]) if state.get("projection") else None
