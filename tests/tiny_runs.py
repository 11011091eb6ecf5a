"""Tiny saved runs for the web and report tests: a random 2-layer BERT trained for seconds on a
CEBaB subsample by ``run_experiment``, so each run has what ``lucidlm train`` writes (config.json,
model.safetensors, backbone/, run.json)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
import yaml

from lucidlm.backbone import DEFAULT_BACKBONE, resolve_backbone
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


def save_tiny_bert(path: Path) -> Path:
    """A 2-layer, 32-wide random BERT (seed 0) with the default backbone's WordPiece tokenizer, saved in ``path``."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_backbone(DEFAULT_BACKBONE))
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


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
