"""A run folder as a value: ``Run(path)`` reads what ``lucidlm train`` wrote (``layout`` names the
files): the record (``run.json``) and its parts, the model, the task, the suite's results, the
corrections store, the fingerprint. Writing ``run.json`` goes through ``write_record`` (staged and
renamed: never half-written). The CLI, the report, the page, ``learn`` and the bench read runs
through it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import LucidError
from .layout import (  # noqa: F401 (the layout's names, from here too)
    BACKBONE_DIR,
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CURVES_PNG,
    EVALUATION_JSON,
    EVALUATION_MD,
    RECORDS,
    RUN_FILE,
    STORE_FILE,
    TRAINING_LOG,
    WEIGHTS_FILE,
    read_record,
    write_record,
)


@dataclass(frozen=True)
class Run:
    path: Path

    def __init__(self, path: str | os.PathLike):
        object.__setattr__(self, "path", Path(path))

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- the saved model ------------------------------------------------------------------------
    @property
    def is_saved(self) -> bool:
        return (self.path / CONFIG_FILE).is_file()

    def check_saved(self) -> Run:
        """This run, or an error saying the folder holds no saved model."""
        if not self.path.is_dir():
            raise LucidError(f"{self.path}: no such run folder")
        if not self.is_saved:
            raise LucidError(f"{self.path}: not a saved run ({CONFIG_FILE} is missing)")
        return self

    def load_model(self):
        from .models import load_pretrained

        return load_pretrained(self.check_saved().path)

    def fingerprint(self) -> str:
        """A digest of the saved model (its config and weights): which model a correction was made on."""
        digest = hashlib.sha256()
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            path = self.path / name
            if not path.is_file():
                raise LucidError(f"{self.path}: not a saved run ({name} is missing)")
            with path.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()

    # ---- its record (run.json) --------------------------------------------------------------------
    @property
    def record(self) -> dict | None:
        """``run.json`` (None for a model saved by ``save_pretrained`` alone)."""
        return read_record(self.path)

    def require_record(self, why: str) -> dict:
        record = self.record
        if record is None:
            raise LucidError(f"{self.path}: {why} needs a run trained by lucidlm train ({RUN_FILE} is missing)")
        return record

    @property
    def metrics(self) -> dict:
        return (self.record or {}).get("metrics") or {}

    @property
    def lineage(self) -> dict | None:
        """For a run learned from corrections: its parent, the records it learned from, their count."""
        return (self.record or {}).get("lineage")

    def write_record(self, record: dict) -> None:
        """``run.json``, staged beside it and renamed over it."""
        write_record(self.path, record)

    def load_task(self):
        """The run's data, as its experiment read it."""
        from .experiment import load_experiment_task

        return load_experiment_task(self.require_record("reading its data")["experiment"]["data"])

    # ---- what was measured and recorded on it -------------------------------------------------------
    def evaluation(self) -> dict | None:
        """The evaluation suite's results (``evaluation.json``), None when it has not run."""
        path = self.path / EVALUATION_JSON
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def corrections(self):
        """The run's own corrections store, None when nothing was recorded (opening never creates one)."""
        from .corrections import CorrectionStore

        return CorrectionStore(self.path / STORE_FILE) if (self.path / STORE_FILE).is_file() else None
