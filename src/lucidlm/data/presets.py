"""Ready-made tasks by name: CEBaB and CEBaB/Yelp augmented (``data.cebab``), SST-2."""

from __future__ import annotations

import numpy as np

from .cebab import load_cebab, load_cebab_augmented
from .sources import hub_splits, preset_folder
from .spec import TaskSpec
from .tables import read_rows
from .task import Task, build_split


def load_sst2(path=None, dev_size: int = 872, seed: int = 0) -> Task:
    """GLUE SST-2. GLUE's test labels are hidden, so its ``dev.tsv`` is our ``test`` (what papers
    report) and a fixed, seeded ``dev_size`` rows of ``train.tsv`` are held out as ``dev`` for
    model selection: a model is never chosen on the split it is reported on."""
    folder = preset_folder(path, "sst2")
    if folder is None:
        raw = hub_splits("glue", {"train": "train", "test": "validation"}, config="sst2")
        where = {"train": "glue/sst2[train]", "test": "glue/sst2[validation]"}
    else:
        raw = {k: read_rows(folder / f"{f}.tsv") for k, f in {"train": "train", "test": "dev"}.items()}
        where = {k: str(folder / f"{f}.tsv") for k, f in {"train": "train", "test": "dev"}.items()}
    spec = TaskSpec(text="sentence", label="label", classes=("0", "1"), name="sst2")
    full = build_split(raw["train"], spec, where["train"])
    held_out = set(np.random.default_rng(seed).choice(len(full), dev_size, replace=False).tolist())
    return Task(
        spec=spec,
        train=full.select(i for i in range(len(full)) if i not in held_out),
        dev=full.select(sorted(held_out)),
        test=build_split(raw["test"], spec, where["test"]),
    )


PRESETS = {"cebab": load_cebab, "cebab-augmented": load_cebab_augmented, "sst2": load_sst2}
