"""A model's outputs on texts, computed once and shared by the evaluation suites."""

from __future__ import annotations

import numpy as np
import torch

from ..data import MISSING, Split


class TextOutputs:
    """Each input's label logits and concept logits (``model.infer``, batched, truncated as in
    training); an input already seen is not run again. An input is a text, or a text and its
    pair on sentence-pair tasks: both are read by the model and both key the cache."""

    def __init__(self, model, batch_size: int = 64):
        self.model, self.batch_size = model, batch_size
        self._rows: dict[tuple[str, str | None], tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]] = {}

    def get(self, texts, text_pairs=None) -> dict:
        """``label_logits`` ``[N, C]``, ``concept_logits`` (one ``[N, V_k]`` array a concept; empty
        for models without concepts) and ``concept_states`` (the concept layer's, from which
        ``model.intervened_label_logits`` recomputes the label), in the order of ``texts`` (with
        ``text_pairs``)."""
        texts = list(texts)
        pairs = [None] * len(texts) if text_pairs is None else list(text_pairs)
        if len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} text pairs")
        keys = list(zip(texts, pairs))
        new = list(dict.fromkeys(key for key in keys if key not in self._rows))
        if new:
            k = len(self.model.spec.concepts)
            blank = Split(
                texts=[t for t, _ in new],
                labels=np.zeros(len(new), dtype=np.int64),
                concepts=np.full((len(new), k), MISSING),
                text_pairs=None if text_pairs is None else [p for _, p in new],
            )
            inferred = self.model.infer(blank, self.batch_size)
            concepts, states = inferred.get("concept_logits", []), inferred.get("concept_states", [])
            for i, key in enumerate(new):
                self._rows[key] = (inferred["label_logits"][i], [c[i] for c in concepts], [s[i] for s in states])
        rows = [self._rows[key] for key in keys]
        n_concepts = len(rows[0][1]) if rows else 0
        return {
            "label_logits": np.stack([r[0] for r in rows]) if rows else np.zeros((0, self.model.spec.num_labels)),
            "concept_logits": [np.stack([r[1][k] for r in rows]) for k in range(n_concepts)],
            "concept_states": [np.stack([r[2][k] for r in rows]) for k in range(n_concepts)],
        }


def split_outputs(model, outputs: TextOutputs, split: Split) -> tuple[dict, list[torch.Tensor]]:
    """A split's cached outputs, and its concept states as tensors on the model's device."""
    found = outputs.get(split.texts, split.text_pairs)
    return found, [torch.from_numpy(x).to(model.device) for x in found["concept_states"]]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(-1, keepdims=True)
