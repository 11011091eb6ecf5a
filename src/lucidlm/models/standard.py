"""The black-box baseline every table needs (docs/methods.md §1, "standard"): backbone -> pooled h -> label.

Its only explanation is post-hoc: integrated gradients of the predicted label over the tokens.
It takes no corrections."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..explain import Explanation
from ..explain.tokens import integrated_gradients
from ..outputs import ModelOutput
from .base import LucidModel, ModelConfig
from .losses import task_loss


@dataclass
class StandardConfig(ModelConfig):
    pass


class StandardLM(LucidModel):
    family = "standard"
    config_class = StandardConfig

    def __init__(self, config: StandardConfig, spec, backbone, tokenizer):
        super().__init__(config, spec, backbone, tokenizer)
        self.label_head = nn.Linear(self.hidden_size, spec.num_labels)

    def summary(self) -> dict:
        return {**super().summary(), "mode": "standard"}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> ModelOutput:
        pooled = self.pooled(input_ids, attention_mask)
        return ModelOutput(self.calibrated(self.label_head(self.dropout(pooled))), (), pooled)

    def training_loss(self, forward: nn.Module, batch: dict) -> torch.Tensor:
        return task_loss(self.spec, forward(batch["input_ids"], batch["attention_mask"]).label_logits, batch["labels"])

    def explain(self, text: str, *, pair: str | None = None, steps: int = 20) -> Explanation:
        """The prediction, and integrated-gradients token attributions for the predicted label."""
        pairs = [pair] if pair is not None else None
        output = self.forward_texts([text], pairs)
        prediction = self.to_prediction(text, output, 0)
        tokens = []
        if not self.spec.is_regression:
            batch = self.encoder.batch([text], pairs)
            ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
            c = self.spec.label_index(prediction.label)
            tokens.append(
                integrated_gradients(
                    self,
                    ids,
                    mask,
                    lambda i, m: self(i, m).label_logits.softmax(-1)[:, c],
                    "label",
                    steps,
                    text=text,
                    pair=pair,
                )
            )
        return Explanation(text=text, text_pair=pair, prediction=prediction, tokens=tokens)
