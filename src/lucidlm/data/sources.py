"""Where a preset's data comes from: a folder given by path, the folder named under $LUCIDLM_DATA,
or the Hugging Face hub when online."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import LucidError

# Where the presets look when no path is given: $LUCIDLM_DATA/<preset folder>, then the hub.
DATA_ENV = "LUCIDLM_DATA"


def preset_folder(path, folder: str) -> Path | None:
    if path is not None:
        path = Path(path)
        if not path.is_dir():
            raise LucidError(f"{path}: no such folder")
        return path
    if os.environ.get(DATA_ENV) and (Path(os.environ[DATA_ENV]) / folder).is_dir():
        return Path(os.environ[DATA_ENV]) / folder
    return None


def hub_splits(name: str, splits: dict[str, str], config: str | None = None) -> dict[str, list[dict]]:
    try:
        import datasets

        loaded = datasets.load_dataset(name, config)
        return {k: loaded[v].to_list() for k, v in splits.items()}
    except Exception as e:  # offline, or the hub changed: say which and how to avoid it
        raise LucidError(
            f"could not load {name!r} from the Hugging Face hub ({type(e).__name__}); "
            f"give a local folder instead (path=... or ${DATA_ENV})"
        ) from e
