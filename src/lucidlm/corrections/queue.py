"""A queue of texts for people to review (``lucidlm serve RUN --pool FILE``).

The pool's texts are read by the model once, when the queue is built, and ordered by an
intervention policy (docs/methods.md §6): a text's priority is its most worth-asking concept's
score under the policy (``expected_change``: the expected change of the label; ``label_change``:
the probability that a correction changes the decision; ``uncertainty``: the concept's entropy;
``random``: a seeded draw), and the concept to ask about first is the policy's first. A model
without concepts asks for the label, most uncertain label first.

A text handed to a person is theirs for ``lease_seconds``: nobody else gets it meanwhile. Texts
with a standing correction in the store are skipped, whoever made it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.tables import read_rows
from ..errors import LucidError
from ..intervene import INTERVENTION_POLICIES, entropy, expected_change_scores, label_change_scores
from .store import CorrectionStore

if TYPE_CHECKING:
    from ..models import LucidModel

QUEUE_POLICIES = ("expected_change", "label_change", "uncertainty", "random")


@dataclass(frozen=True)
class QueueItem:
    """The next text for a person: where it stands in the queue, and what to ask first (None: the label)."""

    text: str
    position: int  # in the policy's order, 0 first
    ask: str | None
    priority: float
    remaining: int  # texts not yet reviewed, this one included


def read_pool(path: str | Path, column: str = "text") -> list[str]:
    """The texts of a CSV, TSV, JSON, JSONL or Parquet file's ``column``, blank ones refused by row."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        if not path.is_file():
            raise LucidError(f"{path}: no such file")
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        rows = read_rows(path)
    if column not in rows[0]:
        raise LucidError(f"{path}: the pool needs a {column!r} column; the file has {sorted(rows[0])}")
    texts = []
    for n, row in enumerate(rows, 1):
        text = row.get(column)
        if not isinstance(text, str) or not text.strip():
            raise LucidError(f"{path}, row {n}, field {column!r}: expected a non-empty text, found {text!r}")
        texts.append(text)
    return texts


@torch.no_grad()
def priorities(
    model: LucidModel, texts: list[str], policy: str = "expected_change", seed: int = 0, batch_size: int = 64
) -> tuple[np.ndarray, list[str | None]]:
    """Each text's priority (higher: asked sooner) and the concept to ask about first."""
    if policy not in QUEUE_POLICIES:
        raise LucidError(f"--policy: expected one of {list(QUEUE_POLICIES)}, found {policy!r}")
    from ..models import ConceptModel

    rng = np.random.default_rng(seed)
    scores, asks = [], []
    names = [c.name for c in model.spec.concepts]
    was_training = model.training
    model.eval()
    for start in range(0, len(texts), batch_size):
        output = model.forward_texts(texts[start : start + batch_size])
        if not isinstance(model, ConceptModel):
            probs = output.label_logits.float().softmax(-1).cpu().numpy()
            scores.append(rng.random(len(probs)) if policy == "random" else entropy(probs))
            asks += [None] * len(probs)
            continue
        states = list(output.concept_states)
        if policy == "expected_change":
            per_concept = expected_change_scores(model, states).cpu().numpy()
        elif policy == "label_change":  # ties broken by the expected change, as the policy does
            per_concept = (
                label_change_scores(model, states) + 1e-6 * expected_change_scores(model, states).cpu().numpy()
            )
        elif policy == "uncertainty":
            probs = [p.float().cpu().numpy() for p in model.concept_probabilities(model.concept_logits_of(states))]
            per_concept = np.stack([entropy(p) for p in probs], axis=1)
        else:
            per_concept = rng.random((len(states[0]), len(names)))
        order = (
            np.argsort(-per_concept, axis=1, kind="stable")
            if policy == "random"
            else INTERVENTION_POLICIES.get(policy)(model, states, rng)
        )
        scores.append(per_concept.max(axis=1))
        asks += [names[int(k)] for k in order[:, 0]]
    model.train(was_training)
    return np.concatenate(scores) if scores else np.zeros(0), asks


class ReviewQueue:
    """Thread-safe: the server's request threads share one."""

    def __init__(
        self,
        texts: list[str],
        priority: np.ndarray,
        asks: list[str | None],
        store: CorrectionStore,
        run: str,
        policy: str = "expected_change",
        lease_seconds: float = 600.0,
    ):
        self.texts, self.asks, self.store, self.run, self.policy = texts, asks, store, run, policy
        self.priority = np.asarray(priority, dtype=float)
        self.order = np.argsort(-self.priority, kind="stable")  # ties: the pool's order
        self.lease_seconds = lease_seconds
        self.leases: dict[int, tuple[str, float]] = {}  # text index -> (user, expiry)
        self.skipped: dict[str, set[int]] = {}  # user -> texts they passed over
        self.lock = threading.Lock()

    @classmethod
    def build(
        cls,
        model: LucidModel,
        texts: list[str],
        store: CorrectionStore,
        run: str,
        policy: str = "expected_change",
        seed: int = 0,
        lease_seconds: float = 600.0,
    ) -> ReviewQueue:
        if not texts:
            raise LucidError("the review pool holds no texts")
        priority, asks = priorities(model, texts, policy, seed)
        return cls(texts, priority, asks, store, run, policy, lease_seconds)

    def next(self, user: str) -> QueueItem | None:
        """The first text in the policy's order that nobody has corrected and nobody else holds,
        leased to ``user`` (a user asking again gets the text they hold); None when none is left."""
        reviewed = self.store.reviewed_texts(self.run)
        with self.lock:
            clock = time.monotonic()
            self.leases = {
                i: lease for i, lease in self.leases.items() if lease[1] > clock and self.texts[i] not in reviewed
            }
            remaining = sum(1 for text in self.texts if text not in reviewed)
            for position, i in enumerate(self.order):
                i = int(i)
                if self.texts[i] in reviewed or i in self.skipped.get(user, ()):
                    continue
                holder = self.leases.get(i)
                if holder is None or holder[0] == user:
                    self.leases[i] = (user, clock + self.lease_seconds)
                    return QueueItem(self.texts[i], position, self.asks[i], float(self.priority[i]), remaining)
        return None

    def skip(self, user: str) -> None:
        """``user`` passes over the text they hold: it goes back to the others, and not to them again."""
        with self.lock:
            held = [i for i, lease in self.leases.items() if lease[0] == user]
            self.skipped.setdefault(user, set()).update(held)
            for i in held:
                del self.leases[i]

    def waiting(self) -> int:
        reviewed = self.store.reviewed_texts(self.run)
        return sum(1 for text in self.texts if text not in reviewed)
