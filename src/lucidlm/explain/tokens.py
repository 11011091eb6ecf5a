"""Token attributions on the input embeddings (captum): integrated gradients, the families'
own token explanation, and gradient × input, the one-pass post-hoc baseline.

The integrated-gradients baseline replaces every real token by the pad token and keeps special
tokens ([CLS], [SEP]) in place, so an attribution says what the words contribute, not the frame.

How to show the scores is computed here too (``TokenAttribution``): the tokenizer's character
offsets (fast tokenizers) map each token back to the user's own characters, and the tokens of
one word are shown as that word with their summed score.

Methods are ``AttributionMethod`` classes in the ``TOKEN_ATTRIBUTIONS`` registry, each owning its
options (a dataclass); the evaluation suite scores every registered method beside a model's own
explanation (``evaluation.faithfulness``). Adding one: a subclass and ``@TOKEN_ATTRIBUTIONS.register``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

from ..data.collate import readable_text
from ..registry import Registry
from .explanation import TokenAttribution, TokenGroup


def frame_tokens(tokenizer, ids: list[int]) -> list[bool]:
    """Which of ``ids`` the tokenizer added around the text ([CLS], [SEP], <s>…): its special tokens
    but [UNK], which stands for characters of the text (an emoji, a rare letter)."""
    unknown = tokenizer.unk_token_id
    framing = {
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    }
    return [
        bool(s) and not (i == unknown and unknown not in framing)
        for i, s in zip(ids, tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True))
    ]


def token_attribution(
    tokenizer,
    ids: list[int],
    scores: list[float],
    target: str,
    method: str,
    text: str | None = None,
    pair: str | None = None,
) -> TokenAttribution:
    """Scores over the tokens of ``ids``, with how to show them (see ``TokenAttribution``).
    ``ids`` are the tokens of ``text`` (and ``pair``) as the model's encoder read them; without
    the text, or with a tokenizer that gives no offsets, words are rebuilt from the tokens."""
    tokens = tokenizer.convert_ids_to_tokens(ids)
    special = frame_tokens(tokenizer, ids)
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
    scores = [float(s) for s in scores]
    attribution = TokenAttribution(
        target=target,
        method=method,
        tokens=tokens,
        scores=scores,
        special=special,
        words=words,
        space_before=space_before,
    )
    located = None if text is None else _locate(tokenizer, ids, text, pair)
    if located is None:
        attribution.spans = [None] * len(ids)
        attribution.groups = _groups_from_words(words, space_before, special, scores)
    else:
        attribution.spans, attribution.groups, attribution.unread = _groups_from_offsets(located, special, scores)
    return attribution


def _locate(tokenizer, ids: list[int], text: str, pair: str | None):
    """Per token: (which text, word number, start, end) in the text the encoder read (its control
    and format characters removed), with those texts and how their characters map back to the
    user's; None when the tokenizer gives no offsets or does not give ``ids`` again."""
    sources = [text] if pair is None else [text, pair]
    read = [readable_text(s) for s in sources]
    try:
        encoded = tokenizer(*read, truncation=True, max_length=len(ids), return_offsets_mapping=True, verbose=False)
        offsets, words, sequences = encoded["offset_mapping"], encoded.word_ids(), encoded.sequence_ids()
    except (NotImplementedError, ValueError, TypeError):  # a slow (Python) tokenizer has no offsets
        return None
    if list(encoded["input_ids"]) != list(ids):
        return None
    return [(q, w, a, b) for q, w, (a, b) in zip(sequences, words, offsets)], sources, read


def _positions(original: str, read: str) -> list[int]:
    """Where each character of ``read`` (``original`` with some characters deleted) is in ``original``.
    Greedy matching is exact: a deleted character (Cc, Cf) never equals a kept one."""
    positions, j = [], 0
    for i, c in enumerate(original):
        if j < len(read) and read[j] == c:
            positions.append(i)
            j += 1
    return positions


def _groups_from_offsets(located, special: list[bool], scores: list[float]):
    per_token, sources, read = located
    where = [_positions(s, r) for s, r in zip(sources, read)]
    spans: list[tuple[int, int] | None] = []
    groups: list[TokenGroup] = []
    built: list[list] = []  # [sequence, start, end, score, tokens]: one word's tokens
    key = None
    for i, (sequence, word, start, end) in enumerate(per_token):
        if special[i] or sequence is None:
            spans.append(None)
            continue
        spans.append((where[sequence][start], where[sequence][end - 1] + 1) if end > start else None)
        if built and (sequence, word) == key:
            group = built[-1]
            if end > start:
                group[1], group[2] = (
                    (start, end) if group[2] <= group[1] else (min(group[1], start), max(group[2], end))
                )
            group[3] += scores[i]
            group[4].append(i)
        else:
            built.append([sequence, start, end, scores[i], [i]])
            key = (sequence, word)
    ends = [0] * len(read)  # where the last group of each text ends
    for sequence, start, end, score, members in built:
        chars = read[sequence]
        segment = chars[start:end]
        start += len(segment) - len(segment.lstrip())  # byte-level BPE's tokens carry their space
        end = max(start, end - (len(segment) - len(segment.rstrip())))
        if start == end:  # a token of spaces alone is not drawn: its spaces stay between the words
            continue
        start = max(start, ends[sequence])
        if start >= end and groups:  # inside the word before (tokenizers do not do this; kept safe)
            groups[-1].score += score
            groups[-1].tokens += members
            continue
        groups.append(
            TokenGroup(
                text=chars[start:end],
                before=chars[ends[sequence] : start],
                score=score,
                tokens=members,
                pair=sequence == 1,
            )
        )
        ends[sequence] = max(ends[sequence], end)
    rest = read[0][ends[0] :]
    return spans, groups, rest if rest.strip() else ""


def _groups_from_words(
    words: list[str], space_before: list[bool], special: list[bool], scores: list[float]
) -> list[TokenGroup]:
    """Without offsets: a token that starts no word (``##`` pieces, unmarked BPE pieces) joins the word before."""
    groups: list[TokenGroup] = []
    for i, (word, space) in enumerate(zip(words, space_before)):
        if special[i]:
            continue
        if groups and not space:
            groups[-1].text += word
            groups[-1].score += scores[i]
            groups[-1].tokens.append(i)
        else:
            groups.append(TokenGroup(text=word, before=" " if groups and space else "", score=scores[i], tokens=[i]))
    return groups


def integrated_gradients(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    target: str,
    steps: int = 20,
    text: str | None = None,
    pair: str | None = None,
) -> TokenAttribution:
    """Attribute ``score(input_ids, attention_mask) -> [B]`` (one row here) to the tokens of
    ``text`` (and ``pair``), whose characters the views then show (see ``token_attribution``)."""
    tokenizer = model.tokenizer
    special = torch.tensor(frame_tokens(tokenizer, input_ids[0].tolist()), dtype=torch.bool, device=input_ids.device)
    baseline = torch.where(special.unsqueeze(0), input_ids, torch.full_like(input_ids, tokenizer.pad_token_id))
    method = LayerIntegratedGradients(score, model.backbone.get_input_embeddings())
    with torch.enable_grad():
        attributions = method.attribute(
            input_ids,
            baselines=baseline,
            additional_forward_args=(attention_mask,),
            n_steps=steps,
            internal_batch_size=steps,
        )
    scores = attributions.sum(-1)[0].detach()
    return token_attribution(
        tokenizer, input_ids[0].tolist(), scores.tolist(), target, f"integrated_gradients(steps={steps})", text, pair
    )


def gradient_x_input(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    target: str,
    text: str | None = None,
    pair: str | None = None,
) -> TokenAttribution:
    """Gradient of ``score`` with respect to each token's input embedding, dotted with that
    embedding (one backward pass; one row here)."""
    method = LayerGradientXActivation(score, model.backbone.get_input_embeddings())
    with torch.enable_grad():
        attributions = method.attribute(input_ids, additional_forward_args=(attention_mask,))
    return token_attribution(
        model.tokenizer,
        input_ids[0].tolist(),
        attributions.sum(-1)[0].detach().tolist(),
        target,
        "gradient_x_input",
        text,
        pair,
    )


# ---- methods by name ------------------------------------------------------------------------------
@dataclass
class NoOptions:
    pass


class AttributionMethod:
    """A token attribution method. ``attribute(model, input_ids, attention_mask, score, target,
    text=None, pair=None)``: ``score(input_ids, attention_mask) -> [B]`` (one row here) attributed to
    the tokens, as a ``TokenAttribution`` with one score per input id; ``Options``: its settings,
    given as keywords when it is made (``IntegratedGradients(steps=50)``)."""

    Options: ClassVar[type] = NoOptions

    def __init__(self, **options):
        self.options = self.Options(**options)

    def attribute(self, model, input_ids, attention_mask, score, target: str, text=None, pair=None) -> TokenAttribution:
        raise NotImplementedError


TOKEN_ATTRIBUTIONS: Registry = Registry("token_attribution", base=AttributionMethod)


@dataclass
class IntegratedGradientsOptions:
    steps: int = 20


@TOKEN_ATTRIBUTIONS.register("integrated_gradients")
class IntegratedGradients(AttributionMethod):
    """Integrated gradients from the pad-token baseline (``integrated_gradients``)."""

    Options = IntegratedGradientsOptions

    def attribute(self, model, input_ids, attention_mask, score, target, text=None, pair=None):
        return integrated_gradients(model, input_ids, attention_mask, score, target, self.options.steps, text, pair)


@TOKEN_ATTRIBUTIONS.register("gradient_x_input")
class GradientXInput(AttributionMethod):
    """Gradient × input, one backward pass (``gradient_x_input``)."""

    def attribute(self, model, input_ids, attention_mask, score, target, text=None, pair=None):
        return gradient_x_input(model, input_ids, attention_mask, score, target, text, pair)
