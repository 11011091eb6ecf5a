"""Tasks and their data: ``load_task`` is the entry point."""

from __future__ import annotations

from pathlib import Path

from ..errors import LucidError
from .collate import TextEncoder
from .presets import PRESETS, load_cebab, load_cebab_augmented, load_sst2
from .spec import ConceptSpec, TaskSpec
from .task import MISSING, Split, Task, build_split, load_table_task


def load_task(source: str | Path, **options) -> Task:
    """Load a task by preset name (``cebab``, ``cebab-augmented``, ``sst2``) or from a table file.

    ``load_task("cebab", path="data/cebab")`` (a folder of the CEBaB v1.1 JSON files);
    ``load_task("reviews.csv", text="review", label="stars", concepts=["food"], dev="dev.csv")``.
    """
    if str(source) in PRESETS:
        try:
            return PRESETS[str(source)](**options)
        except TypeError as e:
            raise LucidError(f"data preset {str(source)!r}: {e}") from None
    if not Path(source).exists():
        raise LucidError(f"{source}: no such file, and not a preset name ({sorted(PRESETS)})")
    for required in ("text", "label"):
        if required not in options:
            raise LucidError(f"{source}: name the {required} column ({required}=...)")
    try:
        return load_table_task(source, **options)
    except TypeError as e:
        raise LucidError(f"{source}: {e}") from None


__all__ = [
    "ConceptSpec",
    "TaskSpec",
    "Split",
    "Task",
    "MISSING",
    "TextEncoder",
    "build_split",
    "load_task",
    "load_table_task",
    "load_cebab",
    "load_cebab_augmented",
    "load_sst2",
]
