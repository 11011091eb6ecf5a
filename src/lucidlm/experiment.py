"""Experiments from YAML: data, model and training in one file; ``lucidlm train`` runs one.

    data:     {source: cebab, path: data/cebab, subsample: {train: 200}}
    model:    {family: bottleneck, mode: joint, backbone: sentence-transformers/all-MiniLM-L6-v2}
    training: {epochs: 5, seed: 0}
    output_dir: runs/cebab-joint      # optional; default runs/<config name> in the working folder

Relative paths inside a config are read from the config file's folder.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

from .checkpoints import STATE_FILE
from .config import from_dict
from .data import Task, load_task
from .data.automatic_concepts import read_statements, with_automatic_concepts
from .errors import LucidError
from .layout import CHECKPOINT_DIR, RUN_FILE, read_record, write_record
from .models import FAMILIES, LucidModel, load_pretrained
from .models.base import canonical_family
from .training import TrainingConfig, checkpoint_settings, process_state

SECTIONS = ("data", "model", "training", "output_dir")
PATH_OPTIONS = ("path", "dev", "test")


@dataclass
class Experiment:
    data: dict
    model: dict
    training: TrainingConfig
    output_dir: Path

    def to_dict(self) -> dict:
        return {
            "data": self.data,
            "model": self.model,
            "training": asdict(self.training),
            "output_dir": str(self.output_dir),
        }


def read_experiment(path: str | Path, output_dir: str | Path | None = None) -> Experiment:
    """Parse and check a config file without touching any data or model."""
    path = Path(path)
    if not path.is_file():
        raise LucidError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise LucidError(f"{path}: invalid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise LucidError(f"{path}: expected a mapping with keys {list(SECTIONS)}")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise LucidError(f"{path}: unknown key(s) {unknown}; expected some of {list(SECTIONS)}")
    for section in ("data", "model"):
        if not isinstance(raw.get(section), dict):
            raise LucidError(f"{path}: section {section!r} is missing or not a mapping")
    data = dict(raw["data"])
    if "source" not in data:
        raise LucidError(f"{path}: data.source is missing (a preset name such as 'cebab', or a file)")
    base = path.parent
    for key in PATH_OPTIONS + ("source",):
        if isinstance(data.get(key), str) and (key != "source" or (base / data[key]).exists()):
            data[key] = str((base / data[key]).resolve())
    automatic = data.get("automatic_concepts")
    if (
        isinstance(automatic, dict)
        and isinstance(automatic.get("statements"), str)
        and (base / automatic["statements"]).is_file()
    ):
        data["automatic_concepts"] = {**automatic, "statements": str((base / automatic["statements"]).resolve())}
    model = dict(raw["model"])
    family, options = canonical_family(model.pop("family", "bottleneck"), model)
    # Check the model keys and named choices now, before any data or model is loaded.
    FAMILIES.get(family, f"{path}: model.family").config_class.read(options, f"{path}: model")
    model = {"family": family, **options}
    training = from_dict(TrainingConfig, raw.get("training"), f"{path}: training")
    if output_dir is None:
        output_dir = base / raw["output_dir"] if raw.get("output_dir") else Path("runs") / path.stem
    return Experiment(data=data, model=model, training=training, output_dir=Path(output_dir))


def load_experiment_task(data: dict) -> Task:
    """The config's data: a preset or table, subsampled if asked, its concepts replaced by
    automatic ones (statements scored by a sentence-embedding model) if asked."""
    options = {k: v for k, v in data.items() if k not in ("source", "subsample", "automatic_concepts")}
    task = load_task(data["source"], **options)
    subsample = data.get("subsample") or {}
    for split_name, n in subsample.items():
        split = task.split(split_name)
        setattr(task, split_name, split.sample(int(n), seed=0))
    if data.get("automatic_concepts") is not None:
        task = with_automatic_concepts(task, data["automatic_concepts"])
    return task


def automatic_concept_sources(data: dict, split: str):
    """For data with automatic concepts: their statements, and the human concept values (strings,
    by concept) of ``split`` where the data set has human concepts too (else ``{}``)."""
    automatic = data.get("automatic_concepts")
    if automatic is None:
        return None, {}
    base = load_experiment_task({k: v for k, v in data.items() if k != "automatic_concepts"})
    rows = base.split(split)
    human = {
        c.name: np.array([c.values[v] if v >= 0 else "" for v in rows.concepts[:, k]])
        for k, c in enumerate(base.spec.concepts)
    }
    return read_statements(automatic["statements"], base.spec.classes), human


def run_experiment(experiment: Experiment, resume: bool = False) -> tuple[LucidModel, dict]:
    """Train, select on dev, evaluate on dev and test, and save the run (model + ``run.json``).
    Training checkpoints into the run folder; ``resume`` continues an interrupted run from there.
    With several processes (``accelerate launch``, ``torchrun``) all train, the main one writes."""
    processes = process_state()
    checkpoint = experiment.output_dir / CHECKPOINT_DIR / STATE_FILE
    if resume and not checkpoint.is_file():
        finished = (experiment.output_dir / RUN_FILE).is_file()
        raise LucidError(
            f"{experiment.output_dir}: "
            + (
                "holds a finished run; there is nothing to resume"
                if finished
                else f"no checkpoint to resume from ({checkpoint})"
            )
        )
    if not resume and checkpoint.is_file():
        raise LucidError(
            f"{experiment.output_dir}: holds the checkpoint of an interrupted run; add --resume to continue "
            "it, or delete the folder to start over"
        )
    task = load_experiment_task(experiment.data)
    model_options = {k: v for k, v in experiment.model.items() if k != "family"}
    cls = FAMILIES.get(experiment.model.get("family", "bottleneck"))
    model = cls.from_backbone(task=task.spec, seed=experiment.training.seed, **model_options)
    # the test split is read after training, for the run's record: a checkpoint resumes on the same one only
    with checkpoint_settings({"data": {"test": task.test.fingerprint()}} if task.test is not None else {}):
        model.fit(
            task.train, eval_data=task.dev, config=experiment.training, run_dir=experiment.output_dir, resume=resume
        )
    metrics = {
        name: model.evaluate(split, experiment.training.eval_batch_size)
        for name, split in (("dev", task.dev), ("test", task.test))
        if split is not None
    }
    if processes.is_main_process:
        model.save_pretrained(experiment.output_dir)
        write_record(experiment.output_dir, {"experiment": experiment.to_dict(), "metrics": metrics})
        shutil.rmtree(checkpoint.parent, ignore_errors=True)  # the saved run supersedes it
    processes.wait_for_everyone()
    return model, metrics


def commit_to_run(run_dir: str | Path, model: LucidModel, change: dict) -> dict:
    """Save ``model``, changed after training (e.g. a committed subnetwork rewiring), into its run
    folder, and keep the run's record true to it: the forced-concept logits are recalibrated on
    the training data, dev and test are evaluated again, and ``change`` is kept in the record's
    ``commits`` with the metrics it replaced. When the run's data cannot be read, the record keeps
    the old metrics and says under ``metrics_stale`` that they describe the model before the change.
    Returns the record (``{}`` for a folder with no ``run.json``)."""
    run_dir = Path(run_dir)
    run_file = run_dir / RUN_FILE
    record = read_record(run_dir)
    task = None
    if record is not None:
        try:
            task = load_experiment_task(record["experiment"]["data"])
        except LucidError as e:
            record["metrics_stale"] = (
                f"the metrics describe the model before its committed change "
                f"({_describe(change)}): its data could not be read to evaluate it again ({e})"
            )
    if task is not None:
        training = from_dict(TrainingConfig, record["experiment"].get("training"), f"{run_file}: training")
        model.calibrate_on(task.train, training)
        metrics = {
            name: model.evaluate(split, training.eval_batch_size)
            for name, split in (("dev", task.dev), ("test", task.test))
            if split is not None
        }
        record.setdefault("commits", []).append({"change": change, "metrics_before": record.get("metrics")})
        record["metrics"] = metrics
        record.pop("metrics_stale", None)
    model.save_pretrained(run_dir)
    if record is None:
        return {}
    write_record(run_dir, record)
    return record


def _describe(change: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in change.items())


def load_run(run_dir: str | Path) -> tuple[LucidModel, dict | None]:
    """A saved model and, when it was trained by ``run_experiment``, its experiment record."""
    return load_pretrained(run_dir), read_record(run_dir)
