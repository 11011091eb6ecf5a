"""The files of a run folder, by name: the one place that says what each is called. Every layer
reads these (the model saves under them, training logs and checkpoints under them); the ``Run``
value (``lucidlm.run``) reads a whole folder.

    RUN/
      config.json, model.safetensors, backbone/   the saved model (``save_pretrained``)
      run.json               the experiment, its dev and test metrics, commits, lineage (``learn``)
      training_log.jsonl     one JSON record per logged step and epoch
      checkpoint/            the training loop's state while it runs (deleted when it ends)
      evaluation.json, evaluation.md, intervention_curves.png    the evaluation suite's results
      corrections.sqlite     the corrections recorded on the run
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import LucidError

CONFIG_FILE, WEIGHTS_FILE, BACKBONE_DIR = "config.json", "model.safetensors", "backbone"
RUN_FILE = "run.json"
TRAINING_LOG = "training_log.jsonl"
CHECKPOINT_DIR = "checkpoint"
EVALUATION_JSON, EVALUATION_MD, CURVES_PNG = "evaluation.json", "evaluation.md", "intervention_curves.png"
STORE_FILE = "corrections.sqlite"
# what a run measured, kept beside its model by ``lucidlm export``
RECORDS = (RUN_FILE, EVALUATION_JSON, EVALUATION_MD, TRAINING_LOG)


def read_record(folder: str | Path) -> dict | None:
    """``folder``'s ``run.json`` (None when there is none: a model saved by ``save_pretrained`` alone)."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LucidError(f"{path}: not valid JSON ({e})") from None


def write_record(folder: str | Path, record: dict) -> None:
    """``folder``'s ``run.json``, staged beside it and renamed over it: never half-written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".{RUN_FILE}.tmp"
    staging.write_text(json.dumps(record, indent=2))
    staging.replace(folder / RUN_FILE)
