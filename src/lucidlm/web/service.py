"""One loaded model behind a lock: what the web API asks of it, as JSON-able dicts.

The model is not thread-safe (a subnetwork intervention edits masks in place and puts them
back), and the server answers requests from a thread pool, so every call holds the lock.
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..errors import LucidError


class Unsupported(LucidError):
    """The request is well formed but this model family cannot do it (HTTP 400)."""


class ModelService:
    def __init__(self, model, run_dir: str | Path | None = None):
        self.model = model
        self.run_name = Path(run_dir).name if run_dir is not None else ""
        self.lock = threading.Lock()

    @property
    def has_concepts(self) -> bool:
        return bool(self.model.spec.concepts) and getattr(self.model, "has_concepts", False)

    @property
    def can_intervene(self) -> bool:
        return self.has_concepts and hasattr(self.model, "intervene")

    @property
    def can_intervene_subnetwork(self) -> bool:
        return hasattr(self.model, "intervene_subnetwork")

    def info(self) -> dict:
        model, spec = self.model, self.model.spec
        return {
            "run": self.run_name, "family": model.family, "mode": getattr(model.config, "mode", None),
            "backbone": Path(model.config.backbone).name if Path(model.config.backbone).is_absolute() else model.config.backbone,
            "task": spec.name, "label": spec.label, "classes": list(spec.classes),
            "concepts": [{"name": c.name, "values": list(c.values)} for c in spec.concepts] if self.has_concepts else [],
            "can_intervene": self.can_intervene, "can_intervene_subnetwork": self.can_intervene_subnetwork,
        }

    def predict(self, text: str) -> dict:
        """The label, its probabilities, the concepts and their contributions: one forward pass."""
        with self.lock:
            output = self.model.forward_texts([text])
            prediction = self.model.to_prediction(text, output, 0)
            contributions = self.model.concept_contributions(output, prediction) if self.has_concepts else []
        return {**prediction.to_dict(), "contributions": [vars(c) for c in contributions]}

    def explain(self, text: str) -> dict:
        if not hasattr(self.model, "explain"):
            raise Unsupported(f"a {self.model.family} model has no explanations")
        with self.lock:
            return self.model.explain(text).to_dict()

    def intervene(self, text: str, values: dict[str, str]) -> dict:
        if not self.can_intervene:
            raise Unsupported(f"a {self.model.family} model without concepts has nothing to intervene on")
        with self.lock:
            return self.model.intervene([text], values)[0].to_dict()

    def intervene_subnetwork(self, text: str, concept: str, value: str, fraction: float, score: str = "saliency") -> dict:
        """For this text only: the web page never commits a rewired subnetwork to the saved run."""
        if not self.can_intervene_subnetwork:
            raise Unsupported(f"a {self.model.family} model has no concept subnetworks; "
                              "subnetwork interventions need a SparseCBM run (family 'sparse')")
        with self.lock:
            return self.model.intervene_subnetwork(text, concept, value, fraction=fraction, commit=False, score=score).to_dict()
