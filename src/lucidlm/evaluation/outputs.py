"""A model's outputs on texts, computed once and shared by the evaluation suites."""

from __future__ import annotations

import numpy as np

from ..data import MISSING, Split


class TextOutputs:
    """Each text's label logits and concept logits (``model.infer``, batched, truncated as in
    training); a text already seen is not run again."""

    def __init__(self, model, batch_size: int = 64):
        self.model, self.batch_size = model, batch_size
        self._rows: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}

    def get(self, texts) -> dict:
        """``label_logits`` ``[N, C]`` and ``concept_logits`` (one ``[N, V_k]`` array a concept;
        empty for models without concepts), in the order of ``texts``."""
        texts = list(texts)
        new = list(dict.fromkeys(t for t in texts if t not in self._rows))
        if new:
            k = len(self.model.spec.concepts)
            blank = Split(texts=new, labels=np.zeros(len(new), dtype=np.int64), concepts=np.full((len(new), k), MISSING))
            inferred = self.model.infer(blank, self.batch_size)
            concepts = inferred.get("concept_logits", [])
            for i, text in enumerate(new):
                self._rows[text] = (inferred["label_logits"][i], [c[i] for c in concepts])
        rows = [self._rows[t] for t in texts]
        n_concepts = len(rows[0][1]) if rows else 0
        return {
            "label_logits": np.stack([r[0] for r in rows]) if rows else np.zeros((0, self.model.spec.num_labels)),
            "concept_logits": [np.stack([r[1][k] for r in rows]) for k in range(n_concepts)],
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(-1, keepdims=True)
