"""The web API's requests and answers as pydantic models: they validate what a client sends and
write the OpenAPI schema. Answers mirror the library's own values (``Prediction``,
``InterventionResult``, ``Explanation``) field for field, so the page reads what the CLI prints."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TEXT_CHARS = 2000  # a review is far shorter; longer texts are refused before tokenising
MAX_BODY_BYTES = 64 * 1024  # a whole request body, whatever its fields

Label = Union[str, float]  # a class name, or a number for regression


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored


class TextRequest(Request):
    text: str = Field(..., min_length=1, max_length=MAX_TEXT_CHARS, description="The text to classify.",
                      examples=["Great pasta, but we waited an hour."])

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


class InterveneRequest(TextRequest):
    values: dict[str, str] = Field(..., min_length=1, max_length=64,
                                   description="Concept name → the value to set it to.",
                                   examples=[{"service": "Negative"}])


class SubnetworkRequest(TextRequest):
    concept: str = Field(..., min_length=1, max_length=200, examples=["service"])
    value: str = Field(..., min_length=1, max_length=200, examples=["Negative"])
    fraction: float = Field(0.2, gt=0, lt=1, description="Share of the active weights swapped in every masked layer.")
    score: Literal["saliency", "taylor"] = Field(
        "saliency", description="saliency: |g ⊙ W| (the paper's); taylor: the signed first-order change of the concept's loss.")


# ---- answers ---------------------------------------------------------------------------------
class ConceptValues(BaseModel):
    name: str
    values: list[str]


class Info(BaseModel):
    run: str = Field(description="The run folder's name.")
    family: str
    mode: Optional[str] = None
    backbone: str
    task: str
    label: str
    classes: list[str] = Field(description="Label classes; empty for regression.")
    concepts: list[ConceptValues]
    can_intervene: bool = Field(description="Concept values can be set (concept models).")
    can_intervene_subnetwork: bool = Field(description="Concept subnetworks can be rewired (SparseCBM).")
    max_text_chars: int


class ConceptPrediction(BaseModel):
    value: str
    probabilities: dict[str, float]


class Prediction(BaseModel):
    text: str
    label: Label
    probabilities: dict[str, float]
    concepts: dict[str, ConceptPrediction]


class ConceptContribution(BaseModel):
    concept: str
    value: str
    probability: float
    contribution: float


class PredictResponse(Prediction):
    contributions: list[ConceptContribution] = Field(
        description="Each concept's contribution to the predicted label's logit (concept models).")


class InterventionResponse(BaseModel):
    text: str
    interventions: dict[str, str]
    before: Prediction
    after: Prediction
    label_changed: bool


class SubnetworkInterventionResponse(InterventionResponse):
    concept: str
    fraction: float
    score: str
    weights_changed: int
    committed: bool = Field(description="Always false: the web page never changes the saved model.")


class TokenAttribution(BaseModel):
    target: str
    method: str
    tokens: list[str]
    scores: list[float]


class TrainingExample(BaseModel):
    text: str
    distance: float
    label: Optional[Label] = None
    top_tokens: list[str] = []
    text_pair: Optional[str] = None


class PrototypeMatch(BaseModel):
    prototype: int
    prototype_class: Optional[str]
    similarity: float
    contributions: dict[str, float]
    nearest_examples: list[TrainingExample]


class Explanation(BaseModel):
    text: str
    prediction: Prediction
    concepts: list[ConceptContribution]
    tokens: list[TokenAttribution]
    subnetworks: Optional[dict] = Field(None, description="SparseCBM: densities, overlaps, shared and owned weights.")
    prototypes: list[PrototypeMatch]
    text_pair: Optional[str] = None


class Error(BaseModel):
    detail: str = Field(description="What was wrong, in one line.")
    errors: list[dict] = Field([], description="Each invalid field, as pydantic reports it.")
