"""Ready-made tasks: CEBaB, CEBaB/Yelp with machine-labelled concepts, SST-2.

Conventions follow ``shared/data/README.md``: CEBaB's review label 1..5 becomes classes
"1".."5" (rows with ``no majority`` dropped); each concept is Negative / Positive / unknown,
with empty and ``no majority`` read as ``unknown``.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..errors import LucidError
from .spec import ConceptSpec, TaskSpec
from .tables import read_rows
from .task import Annotations, Task, build_split

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
# Where the presets look when no path is given: $LUCIDLM_DATA/<preset folder>, then the hub.
DATA_ENV = "LUCIDLM_DATA"


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


def _preset_folder(path, folder: str) -> Path | None:
    if path is not None:
        path = Path(path)
        if not path.is_dir():
            raise LucidError(f"{path}: no such folder")
        return path
    if os.environ.get(DATA_ENV) and (Path(os.environ[DATA_ENV]) / folder).is_dir():
        return Path(os.environ[DATA_ENV]) / folder
    return None


def load_cebab(path=None, train_split: str = "train_exclusive", counterfactuals: str | None = None) -> Task:
    """CEBaB v1.1 from a folder of its JSON files, or from the hub dataset ``CEBaB/CEBaB``.

    Splits: ``train`` (``train_split``: ``train_exclusive``, ``train_inclusive`` or
    ``train_observational``), ``dev``, ``test``.
    Row ids are CEBaB's ``id`` so that (original, edit) pairs can be found again.
    ``counterfactuals`` (a split, ``train_inclusive``): the human edits in it of the training
    texts, by CEBaB's full pair protocol, for counterfactual-consistency training.
    """
    spec = cebab_spec()
    folder = _preset_folder(path, "cebab")
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
        hub = _hub_splits(CEBAB_HUB, {**names, "dev": "validation"})
        raw, where = hub, {k: f"{CEBAB_HUB}[{k}]" for k in names}
    pair_rows = raw.pop("counterfactuals", None)
    splits = {}
    for k, rows in raw.items():
        kept = _cebab_rows(rows, spec)
        splits[k] = replace(build_split(kept, spec, where[k], id_field="id"), annotations=cebab_annotations(kept, spec))
    if pair_rows is not None:
        from .counterfactuals import cebab_pairs, edits_of_split  # it reads this module's CEBaB conventions

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
    folder = _preset_folder(path, "cebab-augmented")
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


def load_sst2(path=None, dev_size: int = 872, seed: int = 0) -> Task:
    """GLUE SST-2. GLUE's test labels are hidden, so its ``dev.tsv`` is our ``test`` (what papers
    report) and a fixed, seeded ``dev_size`` rows of ``train.tsv`` are held out as ``dev`` for
    model selection: a model is never chosen on the split it is reported on."""
    folder = _preset_folder(path, "sst2")
    if folder is None:
        raw = _hub_splits("glue", {"train": "train", "test": "validation"}, config="sst2")
        where = {"train": "glue/sst2[train]", "test": "glue/sst2[validation]"}
    else:
        raw = {k: read_rows(folder / f"{f}.tsv") for k, f in {"train": "train", "test": "dev"}.items()}
        where = {k: str(folder / f"{f}.tsv") for k, f in {"train": "train", "test": "dev"}.items()}
    spec = TaskSpec(text="sentence", label="label", classes=("0", "1"), name="sst2")
    full = build_split(raw["train"], spec, where["train"])
    held_out = set(np.random.default_rng(seed).choice(len(full), dev_size, replace=False).tolist())
    return Task(
        spec=spec,
        train=full.select(i for i in range(len(full)) if i not in held_out),
        dev=full.select(sorted(held_out)),
        test=build_split(raw["test"], spec, where["test"]),
    )


def _hub_splits(name: str, splits: dict[str, str], config: str | None = None) -> dict[str, list[dict]]:
    try:
        import datasets

        loaded = datasets.load_dataset(name, config)
        return {k: loaded[v].to_list() for k, v in splits.items()}
    except Exception as e:  # offline, or the hub changed: say which and how to avoid it
        raise LucidError(
            f"could not load {name!r} from the Hugging Face hub ({type(e).__name__}); "
            f"give a local folder instead (path=... or ${DATA_ENV})"
        ) from e


PRESETS = {"cebab": load_cebab, "cebab-augmented": load_cebab_augmented, "sst2": load_sst2}
