"""Tokenisation once per split, and batches padded to their longest row (dynamic padding)."""

from __future__ import annotations

import unicodedata

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import LucidError
from ..progress import tracked
from .task import Split

# Characters that change what a model reads without changing what a person sees: control
# characters (NUL, escapes) and format characters (bidirectional overrides such as U+202E,
# zero-width spaces and joiners, soft hyphens, byte-order marks). A right-to-left override
# turned a 5-star review into 1 star; they are removed before tokenising, in training and at
# inference alike. Tab, newline and carriage return stay: tokenizers read them as spaces.
_KEPT_CONTROLS = frozenset("\t\n\r")


def readable_text(text: str) -> str:
    """``text`` without its control and format characters (Unicode categories Cc and Cf), which
    every path removes before tokenising (see ``_KEPT_CONTROLS``)."""
    if text.isprintable():  # the common case: nothing to remove
        return text
    return "".join(c for c in text if c in _KEPT_CONTROLS or unicodedata.category(c) not in ("Cc", "Cf"))


class TextEncoder:
    """Turns texts (or text pairs) into padded batches for one tokenizer and length limit.

    Every path reads a text the same way: control and format characters removed
    (``readable_text``), then the first ``max_length`` tokens (the model setting; pairs are
    truncated longest first). Training, ``evaluate``, ``predict``, ``explain`` and the page
    therefore give one text one answer; ``batch`` also says how many tokens each text has, so
    that an answer can say when the model read only part of it."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def _encode(self, texts, text_pairs, truncate: bool):
        texts = [readable_text(t) for t in texts]
        pairs = [readable_text(t) for t in text_pairs] if text_pairs is not None else None
        return self.tokenizer(
            texts, pairs, truncation=truncate, max_length=self.max_length if truncate else None, verbose=False
        )

    def tokenize(self, texts, text_pairs=None) -> list[dict]:
        """Token ids per row, truncated to ``max_length``."""
        encoded = self._encode(list(texts), text_pairs, truncate=True)
        return [{k: encoded[k][i] for k in ("input_ids", "attention_mask")} for i in range(len(encoded["input_ids"]))]

    def token_counts(self, texts, text_pairs=None) -> list[int]:
        """How many tokens each text (with its pair) has before truncation."""
        return [len(ids) for ids in self._encode(list(texts), text_pairs, truncate=False)["input_ids"]]

    def pad(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad(rows, padding="longest", return_tensors="pt")

    def batch(self, texts, text_pairs=None) -> dict[str, torch.Tensor]:
        """A padded batch of user texts for inference (empty texts are errors), with
        ``tokens_total`` ``[B]``: each text's length before truncation (``attention_mask``'s row
        sums are what the model reads)."""
        texts = list(texts)
        if not texts:
            raise LucidError("no text given")
        for i, t in enumerate(texts + list(text_pairs or [])):
            if not isinstance(t, str) or not readable_text(t).strip():
                raise LucidError(f"text {i % len(texts) + 1} is empty; expected some words")
        batch = self.pad(self.tokenize(texts, text_pairs))
        batch["tokens_total"] = torch.tensor(self.token_counts(texts, text_pairs))
        return batch

    def loader(self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """Batches of ``input_ids``, ``attention_mask``, ``labels``, ``concepts`` (training truncates)."""
        rows = self.tokenize(split.texts, split.text_pairs)
        for i, row in enumerate(rows):
            row["labels"] = split.labels[i]
            row["concepts"] = split.concepts[i]
            if split.concept_targets is not None:
                row["concept_targets"] = split.concept_targets[i]
            if split.statement_scores is not None:
                row["statement_scores"] = split.statement_scores[i]
        generator = torch.Generator().manual_seed(seed)

        def collate(batch):
            padded = self.pad([{k: r[k] for k in ("input_ids", "attention_mask")} for r in batch])
            padded["labels"] = torch.as_tensor(np.stack([r["labels"] for r in batch]))
            padded["concepts"] = torch.as_tensor(np.stack([r["concepts"] for r in batch]))
            if "concept_targets" in batch[0]:
                padded["concept_targets"] = torch.as_tensor(np.stack([r["concept_targets"] for r in batch]))
            if "statement_scores" in batch[0]:
                padded["statement_scores"] = torch.as_tensor(np.stack([r["statement_scores"] for r in batch]))
            return padded

        loader = DataLoader(rows, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)
        # inference over a split may be long (``lucidlm evaluate``): its progress, when asked for
        return loader if shuffle else tracked(loader, len(loader), f"{len(rows)} rows in batches of {batch_size}")
