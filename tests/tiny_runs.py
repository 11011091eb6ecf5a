"""Tiny saved runs for the web and report tests: a random 2-layer BERT trained for seconds on a
CEBaB subsample by ``run_experiment``, so each run has what ``lucidlm train`` writes (config.json,
model.safetensors, backbone/, run.json)."""

from __future__ import annotations

from pathlib import Path

import yaml

from lucidlm.experiment import read_experiment, run_experiment

MODELS = {
    "standard": {"family": "standard"},
    "joint": {"family": "bottleneck", "mode": "joint"},
    "sparse": {
        "family": "sparse",
        "sparsity": 0.5,
        "pruning_start": 0.25,
        "pruning_end": 0.75,
        "pruning_interval": 1,
        "pruning_score": "movement",
    },
    "proto": {"family": "prototype", "prototypes_per_class": 2, "nearest_examples": 2},
}
EPOCHS = {"standard": 1, "joint": 1, "sparse": 1, "proto": 1}


def train_tiny_run(folder: Path, kind: str, backbone: Path, cebab: Path, test_rows: int = 32) -> Path:
    """Train and save a tiny ``kind`` run (standard, joint, sparse or proto) in ``folder / kind``."""
    config = {
        "data": {"source": "cebab", "path": str(cebab), "subsample": {"train": 64, "dev": 32, "test": test_rows}},
        "model": {**MODELS[kind], "backbone": str(backbone)},
        "training": {"epochs": EPOCHS[kind], "batch_size": 16, "seed": 0, "progress": False},
    }
    path = folder / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(config))
    experiment = read_experiment(path, folder / kind)
    run_experiment(experiment)
    return experiment.output_dir
