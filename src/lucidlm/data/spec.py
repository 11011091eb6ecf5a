"""What a task is: its text fields, its label and its concepts with their allowed values."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import LucidError


@dataclass(frozen=True)
class ConceptSpec:
    """A human concept (``food``) with its allowed values, in index order (``Negative`` = 0, ...)."""

    name: str
    values: tuple[str, ...]
    column: str | None = None  # where a loader reads it; defaults to ``name``

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))
        if len(self.values) < 2 or len(set(self.values)) != len(self.values):
            raise LucidError(f"concept {self.name!r}: expected at least two distinct values, found {list(self.values)}")

    def index(self, value: str) -> int:
        try:
            return self.values.index(value)
        except ValueError:
            raise LucidError(
                f"concept {self.name!r}: unknown value {value!r}; expected one of {list(self.values)}"
            ) from None


@dataclass(frozen=True)
class TaskSpec:
    """A classification (named ``classes``) or regression (``classes`` empty) task over text.

    ``text_pair`` names a second text field for sentence-pair tasks.
    """

    text: str = "text"
    label: str = "label"
    classes: tuple[str, ...] = ()
    concepts: tuple[ConceptSpec, ...] = ()
    text_pair: str | None = None
    name: str = "task"

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "concepts", tuple(self.concepts))
        if len(set(self.classes)) != len(self.classes):
            raise LucidError(f"task {self.name!r}: label classes repeat: {list(self.classes)}")
        if len(self.classes) == 1:
            raise LucidError(
                f"task {self.name!r}: a classification needs two classes or more, found {list(self.classes)}"
            )
        names = [c.name for c in self.concepts]
        if len(set(names)) != len(names):
            raise LucidError(f"task {self.name!r}: concept names repeat: {names}")

    @property
    def is_regression(self) -> bool:
        return not self.classes

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.classes)

    @property
    def concept_names(self) -> list[str]:
        return [c.name for c in self.concepts]

    def concept(self, name: str) -> ConceptSpec:
        for c in self.concepts:
            if c.name == name:
                return c
        raise LucidError(f"unknown concept {name!r}; this model's concepts are {self.concept_names}")

    def label_index(self, value: str) -> int:
        try:
            return self.classes.index(str(value))
        except ValueError:
            raise LucidError(f"unknown label {value!r}; expected one of {list(self.classes)}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TaskSpec:
        d = dict(d)
        d["concepts"] = tuple(ConceptSpec(**c) for c in d.get("concepts", ()))
        return cls(**d)
