"""Training checkpoints: the training loop's whole state in one safetensors file whose metadata
holds the JSON part (no pickles). Written beside the old one and renamed over it, so a kill at
any moment leaves the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import LucidError

STATE_FILE = "training_state.safetensors"


def save_checkpoint(directory: Path, tensors: dict[str, torch.Tensor], state: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path, staging = directory / STATE_FILE, directory / f".{STATE_FILE}.tmp"
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in tensors.items()},
        str(staging),
        metadata={"format": "pt", "lucidlm_training_state": json.dumps(state)},
    )
    with open(staging, "rb") as f:  # on disk before it replaces the old checkpoint
        os.fsync(f.fileno())
    os.replace(staging, path)
    return path


def load_checkpoint(directory: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, state)``; a truncated or corrupt file is one clear error naming it."""
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise LucidError(f"{path}: no checkpoint to resume from")
    try:
        with safe_open(str(path), "pt") as f:
            state = json.loads(f.metadata()["lucidlm_training_state"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise LucidError(f"{path}: truncated or corrupt checkpoint ({e}); delete it to train from the start") from None
    return tensors, state


def prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix``, with it removed."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def check_same_settings(path: Path, saved: dict, current: dict, defaults: dict | None = None) -> None:
    """One clear line naming the first setting in which the checkpoint and this run differ. A
    setting the checkpoint lacks (an option added since it was written) counts at its value in
    ``defaults``, the behaviour from before the option."""
    flat_saved, flat_current = {**_flatten(defaults or {}), **_flatten(saved)}, _flatten(current)
    for key in sorted(set(flat_saved) | set(flat_current)):
        then, now = flat_saved.get(key, "(not set)"), flat_current.get(key, "(not set)")
        if then == now:
            continue
        if key.startswith("data."):  # a split's fingerprint (``Split.fingerprint``)
            raise LucidError(
                f"{path}: {_changed_split(key[len('data.') :], then, now)}; resume on the same data or start over"
            )
        raise LucidError(
            f"{path}: {key} is {then!r} in the checkpoint and {now!r} now; resume with the checkpoint's "
            "settings or start over"
        )


def _changed_split(split: str, then: str, now: str) -> str:
    if then == "(not set)":
        return f"the checkpoint records no {split} split and this run has one"
    if now == "(not set)":
        return f"the checkpoint was written with a {split} split and this run has none"
    return f"the {split} split is not the one the checkpoint was written with (fingerprint {then[:12]} then, {now[:12]} now)"


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: json.loads(json.dumps(value))}  # tuples and lists compare alike


# ---- random number generators -----------------------------------------------------------------
def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    python = random.getstate()
    return tensors, {
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [python[0], list(python[1]), python[2]],
    }


def set_rng_state(tensors: dict[str, torch.Tensor], state: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(len(prefixed(tensors, "rng.cuda.")))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


# ---- optimizer and scheduler ------------------------------------------------------------------
def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer.{index}.{name}"] = value
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def load_optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], saved: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in prefixed(tensors, "optimizer.").items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for key, value in saved["scalars"].items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in saved["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
