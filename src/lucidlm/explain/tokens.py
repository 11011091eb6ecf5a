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


def token_attribution(tokenizer, ids: list[int], scores: list[float], target: str, method: str) -> TokenAttribution:
    """Scores over the tokens of ``ids``, with how to show them (see ``TokenAttribution``)."""
    tokens = tokenizer.convert_ids_to_tokens(ids)
    special = [bool(s) for s in tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)]
    # WordPiece marks continuations (##); byte-level BPE (Ġ) and SentencePiece (▁) mark word starts.
    marked = any(t.startswith(("Ġ", "▁")) for t, s in zip(tokens, special) if not s)
    words, space_before = [], []
    for token in tokens:
        if token.startswith("##"):
            word, space = token[2:], False
        elif token.startswith(("Ġ", "▁")):
            word, space = token[1:], True
        else:
            word, space = token, not marked
        words.append(word)
        space_before.append(space)
    return TokenAttribution(target=target, method=method, tokens=tokens, scores=list(scores), special=special,
                            words=words, space_before=space_before)


def integrated_gradients(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], target: str, steps: int = 20,
) -> TokenAttribution:
    """Attribute ``score(input_ids, attention_mask) -> [B]`` (one row here) to the tokens."""
    tokenizer = model.tokenizer
    special = torch.tensor(tokenizer.get_special_tokens_mask(input_ids[0].tolist(), already_has_special_tokens=True),
                           dtype=torch.bool, device=input_ids.device)
    baseline = torch.where(special.unsqueeze(0), input_ids, torch.full_like(input_ids, tokenizer.pad_token_id))
    method = LayerIntegratedGradients(score, model.backbone.get_input_embeddings())
    with torch.enable_grad():
        attributions = method.attribute(input_ids, baselines=baseline, additional_forward_args=(attention_mask,),
                                        n_steps=steps, internal_batch_size=steps)
    scores = attributions.sum(-1)[0].detach()
    return token_attribution(tokenizer, input_ids[0].tolist(), scores.tolist(), target, f"integrated_gradients(steps={steps})")


def gradient_x_input(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], target: str,
) -> TokenAttribution:
    """Gradient of ``score`` with respect to each token's input embedding, dotted with that
    embedding (one backward pass; one row here)."""
    method = LayerGradientXActivation(score, model.backbone.get_input_embeddings())
    with torch.enable_grad():
        attributions = method.attribute(input_ids, additional_forward_args=(attention_mask,))
    return token_attribution(model.tokenizer, input_ids[0].tolist(), attributions.sum(-1)[0].detach().tolist(), target,
                             "gradient_x_input")
