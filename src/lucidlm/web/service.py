"""One loaded model behind a lock: what the web API asks of it, as JSON-able dicts.

The model is not thread-safe (a subnetwork intervention edits masks in place and puts them
back), and the server answers requests from a thread pool, so every call holds the lock.
What a family can do comes from its type; what it cannot do, ``model.intervene`` refuses
(``Unsupported``, HTTP 400).
"""

from __future__ import annotations

import threading
from pathlib import Path

from ..intervene import INTERVENTION_POLICIES, ConceptValues, SubnetworkRewiring
from ..models import ConceptModel, SubnetworkModel


class ModelService:
    def __init__(self, model, run_dir: str | Path | None = None):
        self.model = model
        self.run_name = Path(run_dir).name if run_dir is not None else ""
        self.lock = threading.Lock()

    def info(self) -> dict:
        model, spec = self.model, self.model.spec
        is_concept_model = isinstance(model, ConceptModel)
        return {
            "run": self.run_name, "family": model.family, "mode": model.summary()["mode"],
            "backbone": Path(model.config.backbone).name if Path(model.config.backbone).is_absolute() else model.config.backbone,
            "task": spec.name, "label": spec.label, "classes": list(spec.classes),
            "concepts": [{"name": c.name, "values": list(c.values)} for c in spec.concepts] if is_concept_model else [],
            "can_intervene": is_concept_model, "can_intervene_subnetwork": isinstance(model, SubnetworkModel),
        }

    def predict(self, text: str) -> dict:
        """The label, its probabilities, the concepts and their contributions: one forward pass."""
        contributions, ask_next = [], []
        with self.lock:
            output = self.model.forward_texts([text])
            prediction = self.model.to_prediction(text, output, 0)
            if isinstance(self.model, ConceptModel):
                contributions = self.model.concept_contributions(output, prediction)
                order = INTERVENTION_POLICIES.get("expected_change")(self.model, output.concept_states)[0]
                ask_next = [self.model.spec.concepts[k].name for k in order]
        return {**prediction.to_dict(), "contributions": [vars(c) for c in contributions], "ask_next": ask_next}

    def explain(self, text: str) -> dict:
        with self.lock:
            return self.model.explain(text).to_dict()

    def intervene(self, text: str, values: dict[str, str]) -> dict:
        with self.lock:
            return self.model.intervene([text], ConceptValues(values))[0].to_dict()

    def intervene_subnetwork(self, text: str, concept: str, value: str, fraction: float, score: str = "saliency") -> dict:
        """For this text only: the web page never commits a rewired subnetwork to the saved run."""
        rewiring = SubnetworkRewiring(concept, value, fraction, score, commit=False)
        with self.lock:
            return self.model.intervene([text], rewiring)[0].to_dict()
