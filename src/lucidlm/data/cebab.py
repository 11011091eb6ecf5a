"""CEBaB (Abraham et al., NeurIPS 2022) and CEBaB/Yelp with machine-labelled concepts: the data
set's conventions in one place: its aspects and their values, its rows, the task spec, annotator
agreement, and its counterfactual pairs.

Conventions follow ``shared/data/README.md``: CEBaB's review label 1..5 becomes classes
"1".."5" (rows with ``no majority`` dropped); each concept is Negative / Positive / unknown,
with empty and ``no majority`` read as ``unknown``.

Counterfactual pairs: an original review and a human edit of it that changed one aspect. The
causal suite scores explanations on them; training can ask the model to agree with them
(``counterfactual_loss_weight``). The aspect is the edit's ``edit_type``; a and b are that
aspect's *validated* majority values in the original and the edit (not ``edit_goal``, which an
edit may miss), with empty and ``no majority`` read as ``unknown`` (this project's convention);
pairs where a = b are dropped. Two protocols: ``originals`` (those pairs only), and ``all``,
CEBaB's full one: every ordered pair of texts that share an original (the original and its
edits) and whose validated values differ in exactly one aspect, in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..errors import LucidError
from ..registry import Registry
from .sources import hub_splits, preset_folder
from .spec import ConceptSpec, TaskSpec
from .tables import read_rows
from .task import MISSING, Annotations, CounterfactualEdits, Split, Task, build_split

CONCEPT_VALUES = ("Negative", "Positive", "unknown")
CEBAB_ASPECTS = ("food", "ambiance", "service", "noise")
EXTRA_CONCEPTS = (
    "cleanliness",
    "price",
    "location",
    "menu variety",
    "waiting time",
    "waiting area",
    "parking",
    "wi-fi",
    "kids-friendly",
)
CEBAB_HUB = "CEBaB/CEBaB"


def cebab_spec(concepts=CEBAB_ASPECTS, name="cebab") -> TaskSpec:
    columns = {a: f"{a}_aspect_majority" for a in CEBAB_ASPECTS}
    return TaskSpec(
        text="description",
        label="review_majority",
        classes=("1", "2", "3", "4", "5"),
        concepts=tuple(ConceptSpec(c, CONCEPT_VALUES, column=columns.get(c, c)) for c in concepts),
        name=name,
    )


def cebab_concept_value(value) -> str:
    """A CEBaB aspect label as a concept value: empty and ``no majority`` are ``unknown``."""
    return "unknown" if value in ("", None, "no majority") else value


def _cebab_rows(rows: list[dict], spec: TaskSpec, drop_no_majority: bool = True) -> list[dict]:
    """Apply the CEBaB conventions: drop ``no majority`` labels, fold empty concepts into unknown."""
    kept = []
    for row in rows:
        if drop_no_majority and str(row.get(spec.label)) == "no majority":
            continue
        row = dict(row)
        for c in spec.concepts:
            row[c.column] = cebab_concept_value(row.get(c.column))
        kept.append(row)
    return kept


def _agreement(distribution) -> float:
    """The share of annotators who gave the majority answer: ``{"Positive": 4, "Negative": 1}`` is 0.8."""
    if not isinstance(distribution, dict) or not sum(distribution.values()):
        return float("nan")
    return max(distribution.values()) / sum(distribution.values())


def cebab_annotations(rows: list[dict], spec: TaskSpec) -> Annotations:
    """Edited rows and annotator agreement from CEBaB's ``is_original`` and label distributions."""
    return Annotations(
        edited=np.array([not row.get("is_original", True) for row in rows], dtype=bool),
        label_agreement=np.array([_agreement(row.get("review_label_distribution")) for row in rows]),
        concept_agreement=np.array(
            [
                [_agreement(row.get(c.column.replace("_majority", "_label_distribution"))) for c in spec.concepts]
                for row in rows
            ]
        ).reshape(len(rows), len(spec.concepts)),
    )


def load_cebab(path=None, train_split: str = "train_exclusive", counterfactuals: str | None = None) -> Task:
    """CEBaB v1.1 from a folder of its JSON files, or from the hub dataset ``CEBaB/CEBaB``.

    Splits: ``train`` (``train_split``: ``train_exclusive``, ``train_inclusive`` or
    ``train_observational``), ``dev``, ``test``.
    Row ids are CEBaB's ``id`` so that (original, edit) pairs can be found again.
    ``counterfactuals`` (a split, ``train_inclusive``): the human edits in it of the training
    texts, by CEBaB's full pair protocol, for counterfactual-consistency training.
    """
    spec = cebab_spec()
    folder = preset_folder(path, "cebab")
    names = {"train": train_split, "dev": "dev", "test": "test"}
    if counterfactuals is not None:
        if counterfactuals in ("dev", "test"):
            raise LucidError(
                f"counterfactuals: {counterfactuals!r} is an evaluation split; training reads "
                "edits of training texts (train_inclusive)"
            )
        names["counterfactuals"] = counterfactuals
    if folder is not None:
        raw = {k: read_rows(folder / f"{v}.json") for k, v in names.items()}
        where = {k: str(folder / f"{v}.json") for k, v in names.items()}
    else:
        hub = hub_splits(CEBAB_HUB, {**names, "dev": "validation"})
        raw, where = hub, {k: f"{CEBAB_HUB}[{k}]" for k in names}
    pair_rows = raw.pop("counterfactuals", None)
    splits = {}
    for k, rows in raw.items():
        kept = _cebab_rows(rows, spec)
        splits[k] = replace(build_split(kept, spec, where[k], id_field="id"), annotations=cebab_annotations(kept, spec))
    if pair_rows is not None:
        edits = edits_of_split(splits["train"], cebab_pairs(pair_rows, protocol="all"))
        if edits is None:
            raise LucidError(
                f"{where['counterfactuals']}: no edit of a text of {where['train']}; "
                "counterfactual pairs need the split that holds the training texts' edits (train_inclusive)"
            )
        splits["train"] = replace(splits["train"], counterfactuals=edits)
    return Task(spec=spec, **splits)


def load_cebab_augmented(path=None, reviews: str = "cebab", concepts=CEBAB_ASPECTS + EXTRA_CONCEPTS) -> Task:
    """The CEBaB or Yelp reviews of Tan et al. (PAKDD 2024) with machine-labelled extra concepts."""
    if reviews not in ("cebab", "yelp"):
        raise LucidError(f"cebab-augmented: reviews must be 'cebab' or 'yelp', found {reviews!r}")
    folder = preset_folder(path, "cebab-augmented")
    if folder is None:
        raise LucidError("cebab-augmented: give the folder of its CSV files (path=...); it is not on the hub")
    files = {
        "train": f"train_{reviews}{'_exclusive' if reviews == 'yelp' else ''}_new_concept_single.csv",
        "dev": f"dev_{reviews}_new_concept_single.csv",
        "test": f"test_{reviews}_new_concept_single.csv",
    }
    spec = cebab_spec(concepts, name=f"{reviews}-augmented")
    return Task(
        spec=spec,
        **{k: build_split(_cebab_rows(read_rows(folder / f), spec), spec, str(folder / f)) for k, f in files.items()},
    )


CEBAB_CLASSES = ("1", "2", "3", "4", "5")
PROTOCOLS = Registry.choices(
    "pair protocol",
    {
        "originals": "each original and its human edits",
        "all": "CEBaB's full protocol: every ordered pair of texts of one original that differ in one aspect",
    },
)


@dataclass(frozen=True)
class CounterfactualPair:
    """An original review and one edit of it that changed ``aspect`` from ``before`` to ``after``.
    ``label_effect``: the true label distribution of the edit minus the original's (training data)."""

    original_id: str
    edit_id: str
    original: str
    edit: str
    aspect: str
    before: str
    after: str
    label_effect: tuple[float, ...] | None = None
    source_concepts: tuple[str, ...] = ()  # the original's validated value of every CEBaB aspect
    edit_label: str | None = None  # the edit's majority label (None: no majority)

    @property
    def direction(self) -> tuple[str, str, str]:
        return self.aspect, self.before, self.after


def label_distribution(row: dict, classes=CEBAB_CLASSES) -> np.ndarray:
    """The annotators' votes over ``classes``, normalised (``review_label_distribution``); a row
    without votes gets the one-hot of its majority label."""
    votes = row.get("review_label_distribution")
    counts = np.zeros(len(classes))
    if isinstance(votes, dict):
        for label, n in votes.items():
            if str(label) in classes:
                counts[classes.index(str(label))] += float(n)
    if counts.sum() == 0:
        label = str(row.get("review_majority"))
        if label not in classes:
            raise LucidError(f"CEBaB row {row.get('id')!r}: no label votes and no majority label among {list(classes)}")
        counts[classes.index(label)] = 1.0
    return counts / counts.sum()


def cebab_pairs(
    rows: list[dict], with_label_effect: bool = False, protocol: str = "originals"
) -> list[CounterfactualPair]:
    """The counterfactual pairs of CEBaB rows (conventions and ``protocol`` in the module doc).
    Aspects are read as the ``cebab`` preset reads them; a row whose label has no majority is
    kept, since its label *distribution* (the votes) is what a pair's label effect needs."""
    PROTOCOLS.check(protocol, "pair protocol")
    spec = cebab_spec()
    rows = _cebab_rows(rows, spec, drop_no_majority=False)
    columns = {c.name: c.column for c in spec.concepts}
    for field in ("original_id", "is_original", "edit_type", "id", "description"):
        if rows and field not in rows[0]:
            raise LucidError(f"CEBaB rows: missing field {field!r}; (original, edit) pairs need it")
    values = lambda row: tuple(row[columns[a]] for a in CEBAB_ASPECTS)  # noqa: E731
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["original_id"], []).append(row)
    pairs = []
    for group in groups.values():
        original = next((r for r in group if r["is_original"]), None)
        if original is None:
            continue
        if protocol == "originals":
            candidates = [(original, edit, edit.get("edit_type")) for edit in group if not edit["is_original"]]
        else:
            candidates = []
            for u in group:
                for v in group:
                    differing = [a for a, x, y in zip(CEBAB_ASPECTS, values(u), values(v)) if x != y]
                    if u is not v and len(differing) == 1:
                        candidates.append((u, v, differing[0]))
        for source, target, aspect in candidates:
            if aspect not in CEBAB_ASPECTS:
                continue
            before, after = source[columns[aspect]], target[columns[aspect]]
            if before == after:  # the edit changed nothing the validators saw
                continue
            effect = (
                tuple((label_distribution(target) - label_distribution(source)).tolist()) if with_label_effect else None
            )
            label = str(target.get("review_majority"))
            pairs.append(
                CounterfactualPair(
                    str(source["id"]),
                    str(target["id"]),
                    source["description"],
                    target["description"],
                    aspect,
                    before,
                    after,
                    effect,
                    values(source),
                    label if label in CEBAB_CLASSES else None,
                )
            )
    return pairs


def cebab_concept_rows(folder: str | Path, split: str) -> tuple[list[str], list[tuple[str, ...]]]:
    """The texts of a CEBaB split file with every aspect's validated value (the S-learner's and
    the matching baseline's training data)."""
    spec = cebab_spec()
    rows = _cebab_rows(read_rows(Path(folder) / f"{split}.json"), spec, drop_no_majority=False)
    return [r["description"] for r in rows], [tuple(r[c.column] for c in spec.concepts) for r in rows]


def load_cebab_pairs(
    folder: str | Path, split: str, with_label_effect: bool = False, protocol: str = "originals"
) -> list[CounterfactualPair]:
    """Pairs of a CEBaB split file (``dev``, ``test``, ``train_inclusive``, …) in ``folder``."""
    return cebab_pairs(read_rows(Path(folder) / f"{split}.json"), with_label_effect, protocol)


def edits_of_split(split: Split, pairs: list[CounterfactualPair]) -> CounterfactualEdits | None:
    """The pairs whose source text is a row of ``split`` (by CEBaB id), as edits of its rows: what
    counterfactual-consistency training reads. None when no pair starts from one of its rows."""
    if split.ids is None:
        raise LucidError(f"{split.source}: rows without ids; counterfactual pairs are found by CEBaB's id")
    spec, row_of = cebab_spec(), {str(i): n for n, i in enumerate(split.ids)}
    names = [c.name for c in spec.concepts]
    kept = [p for p in pairs if p.original_id in row_of]
    if not kept:
        return None
    return CounterfactualEdits(
        sources=np.array([row_of[p.original_id] for p in kept], dtype=np.int64),
        concepts=np.array([names.index(p.aspect) for p in kept], dtype=np.int64),
        values=np.array([spec.concepts[names.index(p.aspect)].values.index(p.after) for p in kept], dtype=np.int64),
        texts=[p.edit for p in kept],
        labels=np.array(
            [spec.classes.index(p.edit_label) if p.edit_label is not None else MISSING for p in kept], dtype=np.int64
        ),
    )
