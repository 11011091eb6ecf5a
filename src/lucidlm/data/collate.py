"""Tokenisation once per split, and batches padded to their longest row (dynamic padding)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import LucidError
from .task import Split


class TextEncoder:
    """Turns texts (or text pairs) into padded batches for one tokenizer and length limit."""

    def __init__(self, tokenizer, max_length: int, input_limit: int | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length  # training rows are truncated to this
        self.input_limit = input_limit or max_length  # a user's text beyond this is an error

    def tokenize(self, texts, text_pairs=None, truncate: bool = True) -> list[dict]:
        """Token ids per row. With ``truncate=False`` a text beyond the limit is an error (user input)."""
        encoded = self.tokenizer(
            list(texts), list(text_pairs) if text_pairs is not None else None,
            truncation=truncate, max_length=self.max_length if truncate else None,
            verbose=False,
        )
        rows = [{k: encoded[k][i] for k in ("input_ids", "attention_mask")} for i in range(len(encoded["input_ids"]))]
        if not truncate:
            for i, row in enumerate(rows):
                if len(row["input_ids"]) > self.input_limit:
                    raise LucidError(
                        f"text {i + 1} is {len(row['input_ids'])} tokens long; this model reads at most "
                        f"{self.input_limit}: shorten it"
                    )
        return rows

    def pad(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        return self.tokenizer.pad(rows, padding="longest", return_tensors="pt")

    def batch(self, texts, text_pairs=None) -> dict[str, torch.Tensor]:
        """A padded batch of user texts for inference; empty or over-long texts are errors."""
        texts = list(texts)
        if not texts:
            raise LucidError("no text given")
        for i, t in enumerate(texts + list(text_pairs or [])):
            if not isinstance(t, str) or not t.strip():
                raise LucidError(f"text {i % len(texts) + 1} is empty; expected some words")
        return self.pad(self.tokenize(texts, text_pairs, truncate=False))

    def loader(self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
        """Batches of ``input_ids``, ``attention_mask``, ``labels``, ``concepts`` (training truncates)."""
        rows = self.tokenize(split.texts, split.text_pairs)
        for i, row in enumerate(rows):
            row["labels"] = split.labels[i]
            row["concepts"] = split.concepts[i]
            if split.concept_targets is not None:
                row["concept_targets"] = split.concept_targets[i]
        generator = torch.Generator().manual_seed(seed)

        def collate(batch):
            padded = self.pad([{k: r[k] for k in ("input_ids", "attention_mask")} for r in batch])
            padded["labels"] = torch.as_tensor(np.stack([r["labels"] for r in batch]))
            padded["concepts"] = torch.as_tensor(np.stack([r["concepts"] for r in batch]))
            if "concept_targets" in batch[0]:
                padded["concept_targets"] = torch.as_tensor(np.stack([r["concept_targets"] for r in batch]))
            return padded

        return DataLoader(rows, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)

