"""Concepts without concept labels (after CB-LLM; Sun, Oikarinen, Ustun, Weng, ICLR 2025).

A concept is a short statement ("The food was delicious."), optionally tied to the classes it
argues for. Each text's *automatic concept score* (ACS) for a statement is the cosine similarity
of their sentence embeddings (default: the offline MiniLM, mean-pooled and normalised as
sentence-transformers does); scores are computed once per (texts, scorer, statements) and cached
on disk. On training rows, *automatic concept correction* (ACC) sets the scores of statements
tied to other classes than the row's label to zero and clips negative scores to zero.

The scores become two-valued concepts (``no``/``yes``) with soft targets: per statement, the
score is standardised by its mean and spread over the training texts and squashed by a sigmoid,
p(yes) = σ((s − μ)/σ_s). Every concept family then trains on them as on labelled concepts (the
concept loss is the cross-entropy to these soft targets, the proper scoring rule for a calibrated
probability), shows them and lets a person set them (``yes`` raises a concept, ``no`` lowers it):
a bottleneck's ``concept_objective: soft_targets``, the default. Each split also carries the
scores themselves (``Split.statement_scores``; ACC-corrected on train and dev), which CB-LLM's
``concept_objective: cos3`` learns instead (``models/label_free.py``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import LucidError
from .collate import readable_text
from .spec import ConceptSpec
from .task import Task

VALUES = ("no", "yes")
PRESET_SETS = ("sst2", "cebab")  # shipped concept sets: lucidlm/data/concept_sets/<name>.yaml
DEFAULT_SCORER = "sentence-transformers/all-MiniLM-L6-v2"
CACHE_ENV = "LUCIDLM_CACHE"


@dataclass(frozen=True)
class Statement:
    text: str
    classes: tuple[str, ...] = ()  # the classes it argues for (ACC); none: it is never zeroed
    matches: tuple[tuple[str, str], ...] = ()  # human concept values it stands for, e.g. (("food", "Positive"),)


@dataclass
class AutomaticConcepts:
    """``data.automatic_concepts`` of a config."""

    statements: object  # a preset name, a file (YAML/JSON list or {class: [statements]}; text: one a line), or inline
    scorer: str = DEFAULT_SCORER
    correction: bool = True  # ACC on the training rows
    cache_dir: str | None = None  # default: $LUCIDLM_CACHE or ~/.cache/lucidlm


def read_statements(source, classes: tuple[str, ...] = ()) -> list[Statement]:
    """Statements from a preset name, a file or an inline list / ``{class: [statements]}``; an
    empty set, a repeated statement, an unreadable file or an unknown class is one clear error."""
    where = "automatic_concepts.statements"
    if isinstance(source, (str, Path)) and str(source) in PRESET_SETS:
        where, source = (
            f"concept set {source!r}",
            yaml.safe_load(files(__package__).joinpath("concept_sets", f"{source}.yaml").read_text()),
        )
    elif isinstance(source, (str, Path)):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
            source = (
                yaml.safe_load(text)
                if path.suffix in (".yaml", ".yml", ".json")
                else [s.strip() for s in text.splitlines() if s.strip()]
            )
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise LucidError(
                f"{path}: cannot read the concept file ({type(e).__name__}: {e}); expected a list of "
                "statements, {class: [statements]}, or one statement a line"
            ) from None
        where = str(path)
    if isinstance(source, dict):
        source = [{"statement": s, "classes": [c]} for c, items in source.items() for s in (items or [])]
    if not isinstance(source, list) or not source:
        raise LucidError(f"{where}: expected a non-empty list of concept statements, found {source!r:.80}")
    statements, seen = [], {}
    for i, item in enumerate(source, start=1):
        entry = {"statement": item} if isinstance(item, str) else item
        if not isinstance(entry, dict) or not isinstance(entry.get("statement"), str) or not entry["statement"].strip():
            raise LucidError(f"{where}: concept {i}: expected a statement (text), found {item!r:.80}")
        text = " ".join(entry["statement"].split())
        key = text.lower().rstrip(".!")
        if key in seen:
            raise LucidError(f"{where}: concept {i} repeats concept {seen[key]}: {text!r}")
        seen[key] = i
        tied = entry.get("classes", entry.get("class", []))
        tied = tuple(str(c) for c in (tied if isinstance(tied, list) else [tied]))
        unknown = [c for c in tied if classes and c not in classes]
        if unknown:
            raise LucidError(
                f"{where}: concept {i} ({text!r}): unknown class {unknown[0]!r}; the classes are {list(classes)}"
            )
        matches = tuple((str(k), str(v)) for k, v in (entry.get("matches") or {}).items())
        statements.append(Statement(text, tied, matches))
    return statements


# ---- scores -----------------------------------------------------------------------------------
def cache_folder(cache_dir: str | None = None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lucidlm") / "concept_scores"


SCORER_MAX_LENGTH = 256  # tokens of a text the scorer reads
SCORE_RECIPE = (
    f"mean-pooled, L2-normalised, cosine; max_length {SCORER_MAX_LENGTH}; readable_text"  # in every cache key
)


def scorer_fingerprint(scorer: str) -> str:
    """A digest of the scorer's files (weights, config, tokenizer): overwritten weights or a changed
    tokenizer give another cache key, where its name alone would bring back the old scores."""
    from ..backbone import resolve_backbone

    folder = Path(resolve_backbone(scorer))
    if not folder.is_dir():  # a hub name the hub will serve: its files are not here to read
        return scorer
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return _files_digest(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files), str(folder))


@functools.lru_cache(maxsize=8)
def _files_digest(listing: tuple, folder: str) -> str:
    """SHA-256 over the names and bytes of the files listed (read again only when a name, size or
    modification time changes)."""
    digest = hashlib.sha256()
    for path, _, _ in listing:
        digest.update(os.path.relpath(path, folder).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def concept_scores(
    texts: list[str],
    statements: list[Statement],
    scorer: str = DEFAULT_SCORER,
    cache_dir: str | None = None,
    batch_size: int = 64,
) -> np.ndarray:
    """``[N, C]`` cosine similarities of the texts' and the statements' sentence embeddings,
    read from the cache when these texts and statements were scored before by the same scorer
    files with the same recipe (``scorer_fingerprint``, ``SCORE_RECIPE``)."""
    texts = [readable_text(t) for t in texts]  # as the models read them
    fingerprint = scorer_fingerprint(scorer)
    key = hashlib.sha256(
        json.dumps([fingerprint, SCORE_RECIPE, [s.text for s in statements], texts]).encode()
    ).hexdigest()
    path = cache_folder(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        try:
            return load_file(str(path))["scores"].numpy()
        except (SafetensorError, OSError, KeyError):
            pass  # a damaged cache entry is computed again
    model, tokenizer = _scorer(scorer, fingerprint)
    embed = lambda items: _embeddings(model, tokenizer, items, batch_size)  # noqa: E731
    scores = (embed(texts) @ embed([s.text for s in statements]).T).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    save_file({"scores": torch.from_numpy(scores).contiguous()}, str(staging))
    staging.replace(path)
    return scores


@functools.lru_cache(maxsize=2)
def _scorer(name: str, fingerprint: str = ""):
    """The scorer model, loaded once per name and fingerprint (its files changed: loaded again)."""
    from ..backbone import load_backbone, load_tokenizer

    return load_backbone(name).eval(), load_tokenizer(name)


@torch.no_grad()
def _embeddings(model, tokenizer, texts: list[str], batch_size: int) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (sentence-transformers' recipe for MiniLM)."""
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            texts[start : start + batch_size],
            padding=True,
            truncation=True,
            max_length=SCORER_MAX_LENGTH,
            return_tensors="pt",
        )
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9), dim=-1))
    return torch.cat(out)


def statement_embeddings(texts: list[str], scorer: str = DEFAULT_SCORER) -> torch.Tensor:
    """The scorer's normalised sentence embeddings of ``texts`` (e.g. the statements themselves)."""
    model, tokenizer = _scorer(scorer, scorer_fingerprint(scorer))
    return _embeddings(model, tokenizer, texts, 64)


def corrected_scores(
    scores: np.ndarray, labels: np.ndarray, statements: list[Statement], classes: tuple[str, ...]
) -> np.ndarray:
    """ACC: a row's scores of statements tied to other classes than its label are 0, negatives are 0."""
    out = np.clip(scores, 0.0, None)
    for j, statement in enumerate(statements):
        if statement.classes:
            allowed = np.isin(labels, [classes.index(c) for c in statement.classes])
            out[~allowed, j] = 0.0
    return out


# ---- a task whose concepts are statements ------------------------------------------------------
def with_automatic_concepts(task: Task, options: dict | AutomaticConcepts) -> Task:
    """``task`` with its concepts replaced by the statements' automatic scores: each a two-valued
    concept (no/yes) with soft targets; hard values are the targets rounded (concept metrics)."""
    if isinstance(options, dict):
        from ..config import from_dict

        options = from_dict(AutomaticConcepts, options, "data.automatic_concepts")
    paired = [name for name, split in task.splits().items() if split.text_pairs is not None]
    if paired:
        raise LucidError(
            f"data.automatic_concepts: the {paired[0]} split has text pairs; statements are scored "
            "against single texts (a pair's second text would be ignored)"
        )
    statements = read_statements(options.statements, task.spec.classes)
    concepts = tuple(ConceptSpec(s.text, VALUES) for s in statements)
    spec = replace(task.spec, concepts=concepts)
    raw = {
        name: concept_scores(split.texts, statements, options.scorer, options.cache_dir)
        for name, split in task.splits().items()
    }
    mean, spread = raw["train"].mean(0), raw["train"].std(0) + 1e-6  # the calibration reads training texts only
    splits = {}
    for name, split in task.splits().items():
        scores = raw[name]
        correct = options.correction and not spec.is_regression
        if name == "train" and correct:
            scores = corrected_scores(scores, split.labels, statements, spec.classes)
        targets = 1.0 / (1.0 + np.exp(-(scores - mean) / spread))
        # what concept_objective cos3 learns (train) and selects its epoch by (dev, corrected as CB-LLM's validation set)
        learned = (
            corrected_scores(raw[name], split.labels, statements, spec.classes) if name == "dev" and correct else scores
        )
        splits[name] = replace(
            split,
            concepts=(targets >= 0.5).astype(np.int64),
            concept_targets=targets.astype(np.float32),
            statement_scores=learned.astype(np.float32),
        )
    extras = {k: v for k, v in splits.items() if k not in ("train", "dev", "test")}
    return Task(spec=spec, train=splits["train"], dev=splits.get("dev"), test=splits.get("test"), extras=extras)
