"""A correction as a record: what the model read and decided, and what the person said (one
function, for the page and API, ``lucidlm intervene --record`` and the benchmarks)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import LucidError, Unsupported
from ..intervene import ConceptValues
from .store import Record

if TYPE_CHECKING:
    from ..models import LucidModel


def make_record(
    model: LucidModel,
    text: str,
    values: dict[str, str],
    gold_label: str | None,
    author: str,
    run: str,
    fingerprint: str,
    key: str = "",
    note: str | None = None,
) -> tuple[Record, dict]:
    """The record of ``author`` setting (or confirming) concept ``values`` of ``text`` and, when
    given, saying its label is ``gold_label``; and the before and after as JSON (``InterventionResult``,
    or the one prediction when no concept is set). A record the model cannot take is refused here,
    before anything is written."""
    classes = list(model.spec.classes)
    if gold_label is not None and gold_label not in classes:
        raise LucidError(f"label: expected one of {classes}, found {gold_label!r}")
    if values and not model.spec.concepts:
        raise Unsupported(f"a {model.family} model has no concepts to correct; give the right label instead")
    if values:
        result = model.intervene([text], ConceptValues(dict(values)))[0].to_dict()
        before, after = result["before"], result["after"]
    else:
        before = after = model.predict([text])[0].to_dict()
        result = {"text": text, "interventions": {}, "before": before, "after": after, "label_changed": False}
    record = Record(
        kind="correction",
        author=author,
        run=run,
        run_fingerprint=fingerprint,
        text=text,
        read_values={name: c["value"] for name, c in before["concepts"].items()},
        set_values=dict(values),
        label_before=str(before["label"]),
        label_after=str(after["label"]),
        gold_label=gold_label,
        key=key,
        note=note,
    )
    return record, result
