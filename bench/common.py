"""Helpers the benchmark scripts share (one home: no script imports another's), each results
file's conventions: paths written relative to the repository, paired differences, the rows of
standard fine-tuning that concept rows compare with, options set on an experiment.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def set_options(experiment, options: dict) -> None:
    """``{"model.<option>" | "training.<option>": value}`` set on an experiment read from its
    config; training options through ``dataclasses.replace``, which checks them."""
    for key, value in options.items():
        section, option = key.split(".", 1)
        if section == "model":
            experiment.model[option] = value
        else:
            experiment.training = dataclasses.replace(experiment.training, **{option: value})


def relative_paths(value, root: Path = ROOT):
    """``value`` with every path under the repository (or beside it, like ../shared) written
    relative to the repository, so that results files hold no machine's absolute paths."""
    if isinstance(value, dict):
        return {k: relative_paths(v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [relative_paths(v, root) for v in value]
    if isinstance(value, str) and value.startswith(str(root.parent) + "/"):
        return os.path.relpath(value, root)
    return value


def random_intervention_rate(row: dict) -> str:
    """The row's RandInt rate as trained. Runs before the option was named trained at 0.25 in
    every mode (``intervention_rate``, not in their configs)."""
    model = row["config"]["model"]
    if model.get("family") not in ("bottleneck", "sparse") or model.get("mode") in ("standard", "independent"):
        return "–"
    return f"{model.get('random_intervention_rate', 0.25):g}"


def standard_rows(rows: dict) -> dict[tuple[str, int], dict]:
    """Standard fine-tuning's rows by data set (``data.source``) and seed: the rows of a ready
    config as it is (their command sets no option but the seed), which the concept rows on that
    data set and seed compare with."""

    def ready(row):
        return re.fullmatch(r"python bench/cebab_bottleneck\.py --modes \S+( --seeds \d+)?", row.get("command", ""))

    return {
        (row["config"]["data"]["source"], row["config"]["training"]["seed"]): row
        for row in rows.values()
        if ready(row) and row["config"]["model"].get("family") == "standard"
    }


def paired_with_standard(
    standard: dict[tuple[str, int], dict], group: list[dict], split: str = "test"
) -> tuple[float, float] | None:
    """Task accuracy on ``split`` of ``group``'s runs minus standard fine-tuning's (``standard_rows``)
    on the same data set (its rows of that split) and seed (``paired_difference``; None for standard
    fine-tuning itself)."""
    if group[0]["config"]["model"].get("family") == "standard":
        return None
    return paired_difference(
        [
            row[split]["task"]["accuracy"] - standard[key][split]["task"]["accuracy"]
            for row in group
            if (key := (row["config"]["data"]["source"], row["config"]["training"]["seed"])) in standard
        ]
    )


def paired_difference(diffs: list[float]) -> tuple[float, float] | None:
    """The mean of paired differences and its standard error; None below two pairs."""
    if len(diffs) < 2:
        return None
    return float(np.mean(diffs)), float(np.std(diffs, ddof=1) / np.sqrt(len(diffs)))


def signed_points(value: float) -> str:
    """A fraction as signed points, one decimal; never "-0.0" (the + 0.0)."""
    return f"{round(100 * value, 1) + 0.0:+.1f}"
