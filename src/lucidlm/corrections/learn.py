"""Learning from corrections (``lucidlm learn RUN -o NEW_RUN``): a new run fine-tuned from the old
one on its training data plus the texts people corrected, with the old run's own settings (its heads,
trained already, at the backbone's learning rate).

A corrected text becomes a training row: the concept values the person set or confirmed are its
concept labels, the label they gave is its label; the values they did not touch, and the label when
they gave none, are not labels (``MISSING``: the losses skip them). Several standing records of one
text merge, the later one winning per concept. The new run's ``run.json`` records its lineage: the
parent run and its fingerprint, the records learned from and their count, the store, and the
parent's dev and test metrics beside its own.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data import MISSING, Split, TaskSpec
from ..data.task import Annotations
from ..errors import LucidError
from ..run import CHECKPOINT_DIR, RUN_FILE, STORE_FILE, Run
from .store import CorrectionStore, Record, store_url

if TYPE_CHECKING:
    from ..models import LucidModel


def run_fingerprint(run_dir: str | Path) -> str:
    """A digest of a saved run's model (its config and weights): which model a correction was made on."""
    return Run(run_dir).fingerprint()


def continuation(training):
    """The parent's ``TrainingConfig`` as ``learn`` continues it: its heads are trained, not fresh,
    so they learn at the backbone's rate (at the parent's head rate, made for freshly initialised
    heads, they forget; chosen on dev, bench/corrections_learning.py)."""
    return replace(training, head_learning_rate=training.learning_rate)


def lineage_fingerprints(record: dict | None, own: str) -> set[str]:
    """The fingerprints of a run and of every run it was learned from (``run.json``'s lineage)."""
    lineage = (record or {}).get("lineage") or {}
    return {own, *lineage.get("ancestors", [])}


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite store, its write-ahead log included (a file copy could miss it)."""
    import sqlite3

    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def corrected_split(records: list[Record], spec: TaskSpec) -> Split:
    """The standing corrections as training rows, one a text (and pair), ``MISSING`` where the person
    said nothing. Values or labels the task does not know are an error naming the record."""
    rows: dict[tuple[str, str | None], dict] = {}
    for record in records:
        row = rows.setdefault((record.text, record.text_pair), {"concepts": {}, "label": None, "ids": []})
        for name, value in record.set_values.items():
            try:
                row["concepts"][spec.concept_names.index(name)] = spec.concept(name).index(value)
            except (ValueError, LucidError):
                raise LucidError(
                    f"record {record.id}: concept {name!r} = {value!r} is not a value this task knows"
                ) from None
        if record.gold_label is not None:
            if record.gold_label not in spec.classes:
                raise LucidError(
                    f"record {record.id}: label {record.gold_label!r}; expected one of {list(spec.classes)}"
                )
            row["label"] = spec.classes.index(record.gold_label)
        row["ids"].append(record.id)
    concepts = np.full((len(rows), len(spec.concepts)), MISSING, dtype=np.int64)
    for n, row in enumerate(rows.values()):
        for k, v in row["concepts"].items():
            concepts[n, k] = v
    labels = np.array([MISSING if row["label"] is None else row["label"] for row in rows.values()], dtype=np.int64)
    pairs = [pair for _, pair in rows] if spec.text_pair else None
    return Split(
        texts=[text for text, _ in rows],
        labels=labels,
        concepts=concepts,
        text_pairs=pairs,
        ids=[",".join(map(str, row["ids"])) for row in rows.values()],
        source="corrections",
    )


def with_rows(train: Split, extra: Split) -> Split:
    """``train`` with ``extra``'s rows after its own (its counterfactual edits keep their sources)."""
    if (train.text_pairs is None) != (extra.text_pairs is None):
        raise LucidError("the corrections and the training data disagree on text pairs")
    annotations = None
    if train.annotations is not None:
        n, k = len(extra), train.annotations.concept_agreement.shape[1]
        a = train.annotations
        annotations = Annotations(
            np.concatenate([a.edited, np.zeros(n, dtype=bool)]),
            np.concatenate([a.label_agreement, np.full(n, np.nan)]),
            np.concatenate([a.concept_agreement, np.full((n, k), np.nan)]),
        )
    if train.concept_targets is not None or train.statement_scores is not None:
        raise LucidError(
            "learning from corrections of automatic concepts is not supported yet: their training targets "
            "come from the statements' scorer, which a person's yes or no does not replace"
        )
    return replace(
        train,
        texts=train.texts + extra.texts,
        labels=np.concatenate([train.labels, extra.labels]),
        concepts=np.concatenate([train.concepts, extra.concepts]),
        text_pairs=None if train.text_pairs is None else train.text_pairs + extra.text_pairs,
        ids=None if train.ids is None else train.ids + [f"correction:{i}" for i in extra.ids],
        annotations=annotations,
        source=f"{train.source} + corrections",
    )


def learn(
    run_dir: str | Path,
    output_dir: str | Path,
    store: CorrectionStore | str | None = None,
    records: list[Record] | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    training: dict | None = None,
) -> tuple[LucidModel, dict]:
    """Fine-tune a new run from ``run_dir`` on its training data plus its standing corrections (those
    made on it or on a run it was learned from), saved to ``output_dir``. ``records``: learn from
    these instead of the store's; ``training``: settings that replace the parent's (``TrainingConfig``
    fields). Returns ``(model, run record)``."""
    from ..config import from_dict
    from ..experiment import load_experiment_task
    from ..models import ConceptModel, load_pretrained
    from ..training import TrainingConfig

    run_dir, output_dir = Path(run_dir), Path(output_dir)
    run_file = run_dir / RUN_FILE
    if not run_file.is_file():
        raise LucidError(f"{run_dir}: learn needs a run trained by lucidlm train ({RUN_FILE} is missing)")
    if output_dir.resolve() == run_dir.resolve():
        raise LucidError(f"-o {output_dir}: the new run needs its own folder; the parent run stays as it is")
    if (output_dir / RUN_FILE).exists():
        raise LucidError(f"-o {output_dir}: holds a run already; choose another folder")
    parent = json.loads(run_file.read_text())
    fingerprint = run_fingerprint(run_dir)
    store = store if isinstance(store, CorrectionStore) else CorrectionStore(store if store is not None else run_dir)
    if records is None:
        ancestry = lineage_fingerprints(parent, fingerprint)
        records = [r for r in store.standing() if r.run_fingerprint in ancestry]
    if not records:
        raise LucidError(f"{store.safe_url}: no standing corrections of {run_dir.name} to learn from")

    model = load_pretrained(run_dir)
    if (
        not isinstance(model, ConceptModel)
        and any(r.set_values for r in records)
        and not any(r.gold_label for r in records)
    ):
        raise LucidError(f"a {model.family} model learns from labels: none of the {len(records)} corrections gives one")
    experiment = parent["experiment"]
    task = load_experiment_task(experiment["data"])
    corrected = corrected_split(records, task.spec)
    training_changes = training
    training = from_dict(TrainingConfig, experiment.get("training"), f"{run_file}: training")
    training = continuation(training)
    changes = {
        **(training_changes or {}),
        **({"seed": seed} if seed is not None else {}),
        **({"progress": progress} if progress is not None else {}),
    }
    try:
        training = replace(training, **changes)
    except TypeError as e:
        raise LucidError(f"learn: {e}; the settings are TrainingConfig's fields") from None
    model.fit(with_rows(task.train, corrected), eval_data=task.dev, config=training, run_dir=output_dir)
    metrics = {
        name: model.evaluate(split, training.eval_batch_size)
        for name, split in (("dev", task.dev), ("test", task.test))
        if split is not None
    }
    model.save_pretrained(output_dir)
    shutil.rmtree(output_dir / CHECKPOINT_DIR, ignore_errors=True)  # the saved run supersedes it
    if store.url == store_url(run_dir) and (run_dir / STORE_FILE).is_file():
        copy_sqlite(run_dir / STORE_FILE, output_dir / STORE_FILE)  # the new run's corrections continue its parent's
    lineage = {
        "parent": str(run_dir.resolve()),
        "parent_fingerprint": fingerprint,
        "ancestors": sorted(lineage_fingerprints(parent, fingerprint)),
        "store": store.safe_url,
        "records": sorted(r.id for r in records),
        "count": len(records),
        "texts": len(corrected),
        "concept_labels": int((corrected.concepts != MISSING).sum()),
        "labels": int((corrected.labels != MISSING).sum()),
        "parent_metrics": parent.get("metrics"),
    }
    used = {
        "seed": training.seed,
        "head_learning_rate": training.head_learning_rate,
        **{k: v for k, v in changes.items() if k != "progress"},
    }  # the settings this run trained with
    record = {
        "experiment": {
            **experiment,
            "output_dir": str(output_dir),
            "training": {**experiment.get("training", {}), **used},
        },
        "metrics": metrics,
        "lineage": lineage,
    }
    Run(output_dir).write_record(record)
    return model, record
