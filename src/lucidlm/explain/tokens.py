"""Token attributions on the input embeddings (captum): integrated gradients, the families'
own token explanation, and gradient × input, the one-pass post-hoc baseline.

The integrated-gradients baseline replaces every real token by the pad token and keeps special
tokens ([CLS], [SEP]) in place, so an attribution says what the words contribute, not the frame.
"""

from __future__ import annotations

from typing import Callable

import torch
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

from .explanation import TokenAttribution


def integrated_gradients(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], target: str, steps: int = 20,
) -> TokenAttribution:
    """Attribute ``score(input_ids, attention_mask) -> [B]`` (one row here) to the tokens."""
    tokenizer = model.tokenizer
    special = torch.tensor(tokenizer.get_special_tokens_mask(input_ids[0].tolist(), already_has_special_tokens=True), dtype=torch.bool)
    baseline = torch.where(special.unsqueeze(0), input_ids, torch.full_like(input_ids, tokenizer.pad_token_id))
    method = LayerIntegratedGradients(score, model.backbone.get_input_embeddings())
    with torch.enable_grad():
        attributions = method.attribute(input_ids, baselines=baseline, additional_forward_args=(attention_mask,),
                                        n_steps=steps, internal_batch_size=steps)
    scores = attributions.sum(-1)[0].detach()
    return TokenAttribution(
        target=target, method=f"integrated_gradients(steps={steps})",
        tokens=tokenizer.convert_ids_to_tokens(input_ids[0].tolist()), scores=scores.tolist(),
    )


def gradient_x_input(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], target: str,
) -> TokenAttribution:
    """Gradient of ``score`` with respect to each token's input embedding, dotted with that
    embedding (one backward pass; one row here)."""
    method = LayerGradientXActivation(score, model.backbone.get_input_embeddings())
    with torch.enable_grad():
        attributions = method.attribute(input_ids, additional_forward_args=(attention_mask,))
    return TokenAttribution(
        target=target, method="gradient_x_input",
        tokens=model.tokenizer.convert_ids_to_tokens(input_ids[0].tolist()), scores=attributions.sum(-1)[0].detach().tolist(),
    )
