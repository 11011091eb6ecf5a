"""The web API's requests as pydantic models (they validate what a client sends); its answers
are the library's own dataclasses (``Prediction``, ``InterventionResult``, ``Explanation``),
from which pydantic writes the OpenAPI schema, so the page reads what the CLI prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..explain import ConceptContribution
from ..intervene import Suggestion
from ..masking import REWIRING_SCORES
from ..outputs import Prediction

MAX_TEXT_CHARS = 2000  # a review is far shorter; longer texts are refused before tokenising
MAX_BODY_BYTES = 64 * 1024  # a whole request body, whatever its fields
MAX_BATCH_TEXTS = 64  # texts in one /api/predict-batch request


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored


class TextRequest(Request):
    text: str = Field(
        ...,
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        description="The text to classify.",
        examples=["Great pasta, but we waited an hour."],
    )

    @field_validator("text")
    @classmethod
    def encodable(cls, text: str) -> str:
        # JSON may carry lone surrogates ("\ud800"); a tokenizer cannot read them.
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the text is not valid Unicode (it holds a lone surrogate)") from None
        if not text.strip():
            raise ValueError("expected some words, found only white space")
        return text


class BatchRequest(Request):
    texts: list[str] = Field(
        ...,
        min_length=1,
        max_length=MAX_BATCH_TEXTS,
        description="The texts to classify, together.",
        examples=[["Great pasta.", "We waited an hour."]],
    )

    @field_validator("texts")
    @classmethod
    def each_text(cls, texts: list[str]) -> list[str]:
        for i, text in enumerate(texts):
            if len(text) > MAX_TEXT_CHARS:
                raise ValueError(f"text {i + 1}: at most {MAX_TEXT_CHARS} characters, found {len(text)}")
            try:
                TextRequest.encodable(text)
            except ValueError as e:
                raise ValueError(f"text {i + 1}: {e}") from None
        return texts


class InterveneRequest(TextRequest):
    values: dict[str, str] = Field(
        ...,
        min_length=1,
        max_length=64,
        description="Concept name → the value to set it to.",
        examples=[{"service": "Negative"}],
    )


class CorrectionRequest(TextRequest):
    values: dict[str, str] = Field(
        {},
        max_length=64,
        description="Concept name → the value the person sets or confirms; only the concepts they touched.",
        examples=[{"service": "Negative"}],
    )
    label: Optional[str] = Field(None, min_length=1, max_length=200, description="The label the person says is right.")
    key: str = Field(
        "",
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]*$",
        description="An idempotency key: a record sent again with the same key is stored once.",
    )
    note: Optional[str] = Field(None, max_length=2000, description="Why, in the person's words.")

    @model_validator(mode="after")
    def something_said(self):
        if not self.values and self.label is None:
            raise ValueError("a correction needs concept values or a label")
        return self


class RetractRequest(Request):
    reason: str = Field("", max_length=2000, description="Why the record is retracted.")
    key: str = Field("", max_length=64, pattern=r"^[A-Za-z0-9_.:-]*$", description="An idempotency key.")


class SubnetworkRequest(TextRequest):
    concept: str = Field(..., min_length=1, max_length=200, examples=["service"])
    value: str = Field(..., min_length=1, max_length=200, examples=["Negative"])
    fraction: float = Field(0.2, gt=0, lt=1, description="Share of the active weights swapped in every masked layer.")
    score: Literal[tuple(REWIRING_SCORES.names)] = Field(
        "saliency",
        description="saliency: |g ⊙ W| (the paper's); taylor: the signed first-order change of the concept's loss.",
    )


# ---- answers: the library's own values (``outputs``, ``explain``), not a copy kept by hand ------
@dataclass
class PredictAnswer(Prediction):
    """A prediction with each concept's contribution to the predicted label's logit, the concepts
    in the order the label-change policy would ask about them, and what to ask first (concept models)."""

    contributions: list[ConceptContribution] = field(default_factory=list)
    ask_next: list[str] = field(default_factory=list)  # concepts in the order a person should check them
    suggestion: Suggestion | None = None  # the first question, or the pair of corrections that would change the label
    concept_values_share: float | None = None  # how much of the decision the concept values carry (explain)


class ConceptValues(BaseModel):
    name: str
    values: list[str]


class Info(BaseModel):
    run: str = Field(description="The run folder's name.")
    family: str
    mode: Optional[str] = None
    concept_objective: Optional[str] = Field(
        None,
        description="How a bottleneck's concept layer learnt its concepts: "
        "soft_targets (cross-entropy per concept) or cos3 (CB-LLM).",
    )
    backbone: str
    backbone_training: str = Field(
        description="How the backbone's weights are held and were trained: dtype, and fully "
        "fine-tuned, a LoRA adapter, or frozen."
    )
    task: str
    label: str
    classes: list[str] = Field(description="Label classes; empty for regression.")
    concepts: list[ConceptValues]
    can_intervene: bool = Field(description="Concept values can be set (concept models).")
    can_intervene_subnetwork: bool = Field(description="Concept subnetworks can be rewired (SparseCBM).")
    can_confirm: bool = Field(
        description="Confirming a concept's predicted value makes it certain and can move the label "
        "(concept embeddings, probabilities); otherwise a confirmed value changes nothing."
    )
    max_text_chars: int
    contribution_meaning: str = Field(description="What a concept's contribution is, in one line (shown beside them).")
    corrections: CorrectionsInfo


class CorrectionRecord(BaseModel):
    """One record of the corrections store (``corrections.Record``)."""

    id: int
    kind: str = Field(description="correction, or retraction (of the record ``retracts``).")
    author: str
    created_at: str
    run: str
    run_fingerprint: str
    text: str
    text_pair: Optional[str] = None
    read_values: dict[str, str] = Field(description="Concept → the value the model read.")
    set_values: dict[str, str] = Field(description="Concept → the value the person set or confirmed.")
    label_before: Optional[str] = None
    label_after: Optional[str] = None
    gold_label: Optional[str] = Field(None, description="The label the person says is right.")
    retracts: Optional[int] = None
    note: Optional[str] = None
    key: str


class CorrectionAnswer(BaseModel):
    record: CorrectionRecord
    result: dict = Field(description="The prediction before and after (``InterventionResult``).")


class QueueAnswer(BaseModel):
    text: Optional[str] = Field(None, description="The next text to review; null when none is left.")
    ask: Optional[str] = Field(None, description="The concept to ask about first (null: ask for the label).")
    position: Optional[int] = None
    priority: Optional[float] = None
    remaining: int = 0


class Me(BaseModel):
    name: Optional[str] = Field(None, description="Who the token is; null without one.")
    role: str = Field(description="viewer, corrector or admin (viewer without a token).")


class CorrectionsInfo(BaseModel):
    recording: bool = Field(description="Corrections can be recorded here (a store is open).")
    users: int = Field(description="Users who hold tokens; with none, nobody can record.")
    waiting: int = Field(description="This run's standing corrections, waiting to be learned (lucidlm learn).")
    queue: Optional[dict] = Field(None, description="The review queue (--pool): its policy, texts and those waiting.")


class Health(BaseModel):
    alive: bool = Field(description="The model's worker thread runs; when false every model request would fail.")
    waiting: int = Field(description="Requests waiting for the model.")
    jobs_done: int = Field(description="Model jobs run since the server started.")


class Error(BaseModel):
    detail: str = Field(description="What was wrong, in one line.")
    errors: list[dict] = Field([], description="Each invalid field, as pydantic reports it.")
