"""A task's data: splits of texts, label indices and concept-value indices, checked row by row."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import LucidError
from .spec import ConceptSpec, TaskSpec
from .tables import read_rows

MISSING = -100  # a concept with no gold value in a row; ignored by losses and metrics


@dataclass(frozen=True)
class CounterfactualEdits:
    """Human edits of a split's rows, for counterfactual-consistency training: edit i rewrote row
    ``sources[i]`` so that concept ``concepts[i]`` took value ``values[i]`` (indices into the
    task's spec), the other concepts unchanged. The edited texts need not be rows of the split."""

    sources: np.ndarray  # [P] int64 row indices
    concepts: np.ndarray  # [P] int64
    values: np.ndarray  # [P] int64
    texts: list[str]
    labels: np.ndarray | None = None  # [P] int64: the edit's own gold label (MISSING: its annotators had no majority)

    def __len__(self) -> int:
        return len(self.texts)

    def of_rows(self, indices: list[int]) -> CounterfactualEdits | None:
        """The edits of rows ``indices`` (in that order, renumbered), or None when none is left."""
        position = {old: new for new, old in enumerate(indices)}
        keep = [i for i, s in enumerate(self.sources) if int(s) in position]
        if not keep:
            return None
        return CounterfactualEdits(
            np.array([position[int(self.sources[i])] for i in keep], dtype=np.int64),
            self.concepts[keep],
            self.values[keep],
            [self.texts[i] for i in keep],
            None if self.labels is None else self.labels[keep],
        )


@dataclass(frozen=True)
class Annotations:
    """What a data set says of how far its rows can be trusted (CEBaB): ``edited[i]``, row i is a
    human edit of another row; ``label_agreement[i]`` and ``concept_agreement[i, k]``, the share
    of annotators who gave the majority label or value of concept k (NaN: none recorded)."""

    edited: np.ndarray  # [n] bool
    label_agreement: np.ndarray  # [n] float
    concept_agreement: np.ndarray  # [n, K] float

    def of_rows(self, indices: list[int]) -> Annotations:
        return Annotations(self.edited[indices], self.label_agreement[indices], self.concept_agreement[indices])

    def unanimous(self, i: int, k: int, label_share: float = 0.8) -> bool:
        """Row i is an original whose annotators all gave concept k its value and (at least
        ``label_share`` of them) its label: a row a person can check the correction of."""
        return not self.edited[i] and self.concept_agreement[i, k] == 1.0 and self.label_agreement[i] >= label_share


@dataclass
class Split:
    """One split of a task. ``labels`` hold class indices (int64) or targets (float32);
    ``concepts`` is ``[n, K]`` value indices, ``MISSING`` where a row has no gold value."""

    texts: list[str]
    labels: np.ndarray
    concepts: np.ndarray
    text_pairs: list[str] | None = None
    ids: list[str] | None = None
    source: str = ""
    concept_targets: np.ndarray | None = None  # [n, K] soft p(yes) of automatic concepts (``automatic_concepts``)
    # [n, K] the statements' scores that ``concept_objective: cos3`` learns (``automatic_concepts``;
    # ACC-corrected on train and dev). Not in ``fingerprint``: concept_targets are a function of them.
    statement_scores: np.ndarray | None = None
    counterfactuals: CounterfactualEdits | None = None  # human edits of its rows (CEBaB ``counterfactuals``)
    annotations: Annotations | None = None  # how far its rows can be trusted (CEBaB; ``Annotations``)

    def __len__(self) -> int:
        return len(self.texts)

    def fingerprint(self) -> str:
        """A digest of the rows (texts, pairs, labels, concepts): a checkpoint resumes on the same data only."""
        digest = hashlib.sha256(json.dumps([self.texts, self.text_pairs]).encode())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        digest.update(np.ascontiguousarray(self.concepts).tobytes())
        if self.concept_targets is not None:
            digest.update(np.ascontiguousarray(self.concept_targets).tobytes())
        if self.counterfactuals is not None:
            edits = self.counterfactuals
            digest.update(json.dumps(edits.texts).encode())
            for array in (edits.sources, edits.concepts, edits.values):
                digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def select(self, indices) -> Split:
        indices = list(indices)
        pick = lambda xs: None if xs is None else [xs[i] for i in indices]  # noqa: E731
        return replace(
            self,
            texts=pick(self.texts),
            labels=self.labels[indices],
            concepts=self.concepts[indices],
            text_pairs=pick(self.text_pairs),
            ids=pick(self.ids),
            concept_targets=None if self.concept_targets is None else self.concept_targets[indices],
            statement_scores=None if self.statement_scores is None else self.statement_scores[indices],
            counterfactuals=None if self.counterfactuals is None else self.counterfactuals.of_rows(indices),
            annotations=None if self.annotations is None else self.annotations.of_rows(indices),
        )

    def sample(self, n: int, seed: int = 0) -> Split:
        """A fixed random subset of ``n`` rows (all rows when ``n >= len``), in a repeatable order."""
        if n >= len(self):
            return self
        return self.select(sorted(np.random.default_rng(seed).choice(len(self), n, replace=False)))


@dataclass
class Task:
    spec: TaskSpec
    train: Split
    dev: Split | None = None
    test: Split | None = None
    extras: dict[str, Split] = field(default_factory=dict)

    def splits(self) -> dict[str, Split]:
        """Every split the task has, by name."""
        return {
            k: v
            for k, v in {"train": self.train, "dev": self.dev, "test": self.test, **self.extras}.items()
            if v is not None
        }

    def split(self, name: str) -> Split:
        splits = {"train": self.train, "dev": self.dev, "test": self.test, **self.extras}
        if splits.get(name) is None:
            available = [k for k, v in splits.items() if v is not None]
            raise LucidError(f"task {self.spec.name!r} has no split {name!r}; available: {available}")
        return splits[name]


def build_split(rows: list[dict], spec: TaskSpec, source: str, id_field: str | None = None) -> Split:
    """Check every row against ``spec`` and convert it; errors name the source, row and field."""
    if not rows:
        raise LucidError(f"{source}: the data set is empty (no rows left to use)")
    fields = [spec.text, spec.label] + ([spec.text_pair] if spec.text_pair else [])
    fields += [c.column or c.name for c in spec.concepts]
    missing = [f for f in fields if f not in rows[0]]
    if missing:
        raise LucidError(f"{source}: missing column(s) {missing}; the file has {sorted(rows[0])}")

    texts, pairs, labels, concepts, ids = [], [], [], [], []
    for n, row in enumerate(rows, 1):
        where = f"{source}, row {n}"
        texts.append(_text(row, spec.text, where))
        if spec.text_pair:
            pairs.append(_text(row, spec.text_pair, where))
        labels.append(_label(row, spec, where))
        concepts.append([_concept(row, c, where) for c in spec.concepts])
        if id_field:
            ids.append(str(row.get(id_field)))
    return Split(
        texts=texts,
        labels=np.asarray(labels, dtype=np.float32 if spec.is_regression else np.int64),
        concepts=np.asarray(concepts, dtype=np.int64).reshape(len(rows), len(spec.concepts)),
        text_pairs=pairs if spec.text_pair else None,
        ids=ids if id_field else None,
        source=source,
    )


def _field(row: dict, name: str, where: str):
    if name not in row:
        raise LucidError(f"{where}: missing field {name!r}")
    return row[name]


def _text(row: dict, name: str, where: str) -> str:
    value = _field(row, name, where)
    if not isinstance(value, str) or not value.strip():
        raise LucidError(f"{where}, field {name!r}: expected a non-empty text, found {value!r}")
    return value


def _label(row: dict, spec: TaskSpec, where: str):
    value = _field(row, spec.label, where)
    if spec.is_regression:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise LucidError(f"{where}, field {spec.label!r}: expected a number, found {value!r}") from None
    value = str(value)
    if value not in spec.classes:
        raise LucidError(
            f"{where}, field {spec.label!r}: unknown label {value!r}; expected one of {list(spec.classes)}"
        )
    return spec.classes.index(value)


def _concept(row: dict, concept: ConceptSpec, where: str) -> int:
    column = concept.column or concept.name
    value = _field(row, column, where)
    if value is None or value == "":
        return MISSING
    value = str(value)
    if value not in concept.values:
        raise LucidError(
            f"{where}, field {column!r}: unknown value {value!r} for concept {concept.name!r}; "
            f"expected one of {list(concept.values)}"
        )
    return concept.values.index(value)


def _sorted_values(values) -> tuple[str, ...]:
    """Distinct values, numerically sorted when they all are numbers ("2" before "10")."""
    distinct = sorted({str(v) for v in values if v is not None and v != ""})
    try:
        return tuple(sorted(distinct, key=float))
    except ValueError:
        return tuple(distinct)


def load_table_task(
    train: str | Path,
    text: str,
    label: str,
    concepts: list[str] | dict[str, list[str]] | None = None,
    dev: str | Path | None = None,
    test: str | Path | None = None,
    text_pair: str | None = None,
    classes: list[str] | None = None,
    regression: bool = False,
) -> Task:
    """A task from CSV/TSV/JSON/JSONL files, given its column names.

    Label classes and concept values are read off the training file unless given; a value in
    dev or test that training never saw is an error naming its file and row.
    """
    train_rows = read_rows(train)
    for column in [text, label] + ([text_pair] if text_pair else []) + list(concepts or []):
        if column not in train_rows[0]:
            raise LucidError(f"{train}: missing column {column!r}; the file has {sorted(train_rows[0])}")
    if regression:
        classes = ()
    elif classes is None:
        classes = _sorted_values(r.get(label) for r in train_rows)
    if isinstance(concepts, dict):
        concept_specs = tuple(ConceptSpec(name, tuple(values)) for name, values in concepts.items())
    else:
        concept_specs = tuple(
            ConceptSpec(name, _sorted_values(r.get(name) for r in train_rows)) for name in concepts or ()
        )
    spec = TaskSpec(
        text=text,
        label=label,
        classes=tuple(classes),
        concepts=concept_specs,
        text_pair=text_pair,
        name=Path(train).stem,
    )
    return Task(
        spec=spec,
        train=build_split(train_rows, spec, str(train)),
        dev=build_split(read_rows(dev), spec, str(dev)) if dev else None,
        test=build_split(read_rows(test), spec, str(test)) if test else None,
    )
