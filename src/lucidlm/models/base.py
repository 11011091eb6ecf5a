"""What every model family shares: a backbone with pooling, typed predictions, and
``save_pretrained`` / ``from_pretrained`` as a JSON config plus safetensors (never pickles)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import ClassVar
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel

from .. import __version__
from ..backbone import DEFAULT_BACKBONE, POOLINGS, backbone_max_length, default_pooling, load_backbone, load_tokenizer, pool
from ..config import from_dict
from ..data import TaskSpec, TextEncoder
from ..errors import LucidError
from ..outputs import ConceptPrediction, ModelOutput, Prediction
from ..training import set_seed

CONFIG_FILE, WEIGHTS_FILE, BACKBONE_DIR = "config.json", "model.safetensors", "backbone"


@dataclass
class ModelConfig:
    """Settings every family has; a family's config adds its own."""

    backbone: str = DEFAULT_BACKBONE
    pooling: str | None = None  # mean | cls | last; None picks mean for encoders, last for decoders
    max_length: int = 128  # training texts are truncated to this many tokens
    dropout: float = 0.1
    # Keys that older saved runs wrote under another name: {old: new}, renamed when loading.
    renamed_keys: ClassVar[dict[str, str]] = {}

    def __post_init__(self):
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise LucidError(f"pooling: expected one of {list(POOLINGS)}, found {self.pooling!r}")


class LucidModel(nn.Module):
    """Base of the families. Subclasses set ``family`` and ``config_class`` and define
    ``forward(input_ids, attention_mask) -> ModelOutput``, ``fit`` and ``evaluate``."""

    family: str = ""
    config_class: type = ModelConfig
    registry: dict[str, type["LucidModel"]] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.family:
            LucidModel.registry[cls.family] = cls

    def __init__(self, config: ModelConfig, spec: TaskSpec, backbone: nn.Module, tokenizer):
        super().__init__()
        if config.pooling is None:
            config.pooling = default_pooling(backbone.config)
        self.config, self.spec, self.backbone, self.tokenizer = config, spec, backbone, tokenizer
        self.encoder = TextEncoder(tokenizer, config.max_length, backbone_max_length(backbone, tokenizer))
        self.dropout = nn.Dropout(config.dropout)
        self.hidden_size = backbone.config.hidden_size
        self.training_history: list[dict] = []

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone: str = DEFAULT_BACKBONE, task: TaskSpec | None = None, seed: int = 0, **config):
        """A new model over a pretrained backbone (hub name or local folder); heads seeded by ``seed``."""
        if task is None:
            raise LucidError(f"{cls.__name__}.from_backbone: give the task spec (task=...)")
        model_config = from_dict(cls.config_class, {**config, "backbone": backbone}, cls.__name__)
        set_seed(seed)
        return cls(model_config, task, load_backbone(backbone), load_tokenizer(backbone))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "LucidModel":
        model = load_pretrained(directory)
        if not isinstance(model, cls):
            raise LucidError(f"{directory}: holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden, attention_mask, self.config.pooling)

    # ---- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def forward_texts(self, texts, text_pairs=None) -> ModelOutput:
        """One forward pass over user texts (checked: non-empty, within the model's limit)."""
        self.eval()
        batch = self.encoder.batch(texts, text_pairs)
        return self(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))

    def predict(self, texts, text_pairs=None) -> list[Prediction]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        output = self.forward_texts(texts, text_pairs)
        return [self.to_prediction(t, output, i) for i, t in enumerate(texts)]

    def to_prediction(self, text: str, output: ModelOutput, i: int,
                      concept_probs: list[torch.Tensor] | None = None) -> Prediction:
        """Row ``i`` of a forward pass as a ``Prediction``; ``concept_probs`` overrides the concepts."""
        if self.spec.is_regression:
            label, probabilities = float(output.label_logits[i, 0]), {}
        else:
            p = output.label_logits[i].softmax(-1).tolist()
            label, probabilities = self.spec.classes[int(np.argmax(p))], dict(zip(self.spec.classes, p))
        if concept_probs is None:
            concept_probs = [logits.softmax(-1) for logits in output.concept_logits]
        concepts = {}
        for spec, probs in zip(self.spec.concepts, concept_probs):
            p = probs[i].tolist()
            concepts[spec.name] = ConceptPrediction(spec.values[int(np.argmax(p))], dict(zip(spec.values, p)))
        return Prediction(text=text, label=label, probabilities=probabilities, concepts=concepts)

    # ---- persistence ----------------------------------------------------------------------
    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """What ``model.safetensors`` holds: the state dict (families may add tensors)."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_state_dict(tensors, strict=True)

    def json_state(self) -> dict:
        """Learned state that is not a tensor (e.g. prototypes' nearest training texts); saved in
        config.json. Families override this and ``load_json_state``."""
        return {}

    def load_json_state(self, state: dict) -> None:
        pass

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` + ``backbone/`` (its config and tokenizer).

        Written to a temporary folder first, so a failure leaves nothing half-written.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            meta = {
                "lucidlm_version": __version__,
                "family": self.family,
                "model": asdict(self.config),
                "task": self.spec.to_dict(),
                "training_history": self.training_history,
                "state": self.json_state(),
            }
            (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
            save_file(self.checkpoint_tensors(), str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
            self.backbone.config.save_pretrained(staging / BACKBONE_DIR)
            self.tokenizer.save_pretrained(staging / BACKBONE_DIR)
            directory.mkdir(exist_ok=True)
            for item in staging.iterdir():
                target = directory / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                item.replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory


def read_run_config(directory: str | Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise LucidError(f"{directory}: no such folder")
    path = directory / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or "family" not in meta or not (directory / WEIGHTS_FILE).is_file():
        raise LucidError(
            f"{directory}: not a saved lucidlm run (expected {CONFIG_FILE} with a 'family' and {WEIGHTS_FILE}, "
            "as save_pretrained writes them)"
        )
    if meta["family"] not in LucidModel.registry:
        raise LucidError(f"{path}: unknown model family {meta['family']!r}; known: {sorted(LucidModel.registry)}")
    return meta


def load_pretrained(directory: str | Path) -> LucidModel:
    """Any family's saved run; the loaded model predicts exactly what the saved one did."""
    directory = Path(directory)
    meta = read_run_config(directory)
    cls = LucidModel.registry[meta["family"]]
    saved = {cls.config_class.renamed_keys.get(k, k): v for k, v in meta["model"].items()}
    config = from_dict(cls.config_class, saved, f"{directory / CONFIG_FILE}: model")
    spec = TaskSpec.from_dict(meta["task"])
    backbone = AutoModel.from_config(AutoConfig.from_pretrained(directory / BACKBONE_DIR))
    tokenizer = load_tokenizer(str(directory / BACKBONE_DIR))
    model = cls(config, spec, backbone, tokenizer)
    model.load_checkpoint_tensors(load_file(str(directory / WEIGHTS_FILE)))
    model.training_history = meta.get("training_history", [])
    model.load_json_state(meta.get("state", {}))
    return model.eval()
