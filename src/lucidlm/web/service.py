"""What the web API asks of one loaded model, as JSON-able dicts. Every model call runs on the
model's worker thread (``worker``): each method returns a future. What a family can do comes
from its type; what it cannot do, ``model.intervene`` refuses (``Unsupported``, HTTP 400).
"""

from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path

from ..corrections.recording import make_record
from ..explain.explanation import concept_values_share
from ..intervene import ConceptValues, SubnetworkRewiring, suggest_corrections
from ..models import ConceptModel, SubnetworkModel
from .worker import ModelWorker, ServingLimits


class ModelService:
    """``store``: where corrections are recorded (None: the page cannot record); ``fingerprint``:
    the run's (``run_fingerprint``), kept with each record; ``queue``: texts to review (``--pool``)."""

    def __init__(
        self,
        model,
        run_dir: str | Path | None = None,
        limits: ServingLimits | None = None,
        store=None,
        fingerprint: str = "",
        queue=None,
    ):
        self.model = model
        self.run_name = Path(run_dir).name if run_dir is not None else ""
        self.store, self.fingerprint, self.queue = store, fingerprint, queue
        self.limits = limits or ServingLimits()
        self.worker = ModelWorker(self.limits)
        self.explanations: OrderedDict[str, dict] = OrderedDict()  # least recently used first; the worker's only

    def info(self) -> dict:
        model, spec = self.model, self.model.spec
        is_concept_model = isinstance(model, ConceptModel)
        return {
            "run": self.run_name,
            "family": model.family,
            "mode": model.summary()["mode"],
            "concept_objective": model.summary().get("concept_objective"),
            "backbone": Path(model.config.backbone).name
            if Path(model.config.backbone).is_absolute()
            else model.config.backbone,
            "backbone_training": model.backbone_training(),
            "task": spec.name,
            "label": spec.label,
            "classes": list(spec.classes),
            "concepts": [{"name": c.name, "values": list(c.values)} for c in spec.concepts] if is_concept_model else [],
            "can_intervene": is_concept_model,
            "can_intervene_subnetwork": isinstance(model, SubnetworkModel),
            "can_confirm": is_concept_model and model.confirming_changes_state,
        }

    def predict(self, text: str) -> Future:
        """One prediction, batched with the others waiting (``PredictAnswer`` as a dict)."""
        return self.worker.submit(self._predictions, text, batched=True)

    def predict_many(self, texts: list[str]) -> Future:
        """Several texts in one forward pass: a list of answers."""
        return self.worker.submit(self._predictions, texts)

    def explain(self, text: str) -> Future:
        return self.worker.submit(self._explanation, text)

    def intervene(self, text: str, values: dict[str, str]) -> Future:
        return self.worker.submit(lambda _: self.model.intervene([text], ConceptValues(values))[0].to_dict(), None)

    def intervene_subnetwork(
        self, text: str, concept: str, value: str, fraction: float, score: str = "saliency"
    ) -> Future:
        """For this text only: the web page never commits a rewired subnetwork to the saved run."""
        rewiring = SubnetworkRewiring(concept, value, fraction, score, commit=False)
        return self.worker.submit(lambda _: self.model.intervene([text], rewiring)[0].to_dict(), None)

    def correction(
        self,
        text: str,
        values: dict[str, str],
        gold_label: str | None,
        author: str,
        key: str = "",
        note: str | None = None,
    ) -> Future:
        """The record of a correction (not yet stored) and its before and after: ``make_record``."""
        return self.worker.submit(
            lambda _: make_record(
                self.model, text, values, gold_label, author, self.run_name, self.fingerprint, key, note
            ),
            None,
        )

    def corrections_info(self) -> dict:
        """Whether corrections can be recorded, whether anyone can (users), how many of this run's
        wait to be learned, and the review queue's state."""
        if self.store is None:
            return {"recording": False, "users": 0, "waiting": 0, "queue": None}
        waiting = sum(1 for r in self.store.standing() if r.run_fingerprint == self.fingerprint)
        queue = (
            None
            if self.queue is None
            else {"policy": self.queue.policy, "texts": len(self.queue.texts), "waiting": self.queue.waiting()}
        )
        return {"recording": True, "users": len(self.store.users()), "waiting": waiting, "queue": queue}

    def close(self) -> None:
        self.worker.close()

    # ---- on the worker thread ---------------------------------------------------------------
    def _predictions(self, texts: list[str]) -> list[dict]:
        """The answers for ``texts``, in their order. A batch pads every text to its longest; run as
        groups of similar length (``limits.length_group`` texts, by characters as a cheap stand-in
        for tokens) it computes far fewer padding positions."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        answers: list[dict] = [{}] * len(texts)
        for start in range(0, len(order), self.limits.length_group):
            group = order[start : start + self.limits.length_group]
            for i, answer in zip(group, self._predictions_of([texts[i] for i in group])):
                answers[i] = answer
        return answers

    def _predictions_of(self, texts: list[str]) -> list[dict]:
        """The label, its probabilities, the concepts, their contributions and the order in which
        to check them: one forward pass for all ``texts``."""
        output = self.model.forward_texts(texts)
        concept_probs = self.model.concept_probabilities(output.concept_logits)
        suggestions = None
        if isinstance(self.model, ConceptModel):  # the label_change order and its first question, computed once
            suggestions = suggest_corrections(self.model, output.concept_states)
        answers = []
        for i, text in enumerate(texts):
            prediction = self.model.to_prediction(text, output, i, concept_probs)
            contributions, ask_next, suggestion = [], [], None
            if suggestions is not None:
                contributions = self.model.concept_contributions(output.row(i), prediction)
                ask_next = list(suggestions[i].order)
                suggestion = vars(suggestions[i])
            answers.append(
                {
                    **prediction.to_dict(),
                    "contributions": [vars(c) for c in contributions],
                    "ask_next": ask_next,
                    "suggestion": suggestion,
                    "concept_values_share": concept_values_share(contributions),
                }
            )
        return answers

    def _explanation(self, text: str) -> dict:
        """Explanations are deterministic and slow (integrated gradients): the recent ones are kept."""
        if text in self.explanations:
            self.explanations.move_to_end(text)
            return self.explanations[text]
        explanation = self.model.explain(text).to_dict()
        self.explanations[text] = explanation
        while len(self.explanations) > self.limits.explain_cache:
            self.explanations.popitem(last=False)
        return explanation
