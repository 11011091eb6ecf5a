"""Proposing a concept set: a chat model that the user names (through LiteLLM: a local Ollama
model, or a hosted one) writes statements per class from the class names and a few training
examples; statements that name a class are ruled out, repeats dropped, and the rest written as a
concept file (``{class: [statements]}``) for a person to review and edit before training.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import yaml

from ..errors import LucidError
from .task import Task

PROMPT = """You help build an interpretable text classifier. Its concepts are short, concrete statements
that a text can support or not. Here are {count} example texts of the class "{name}":

{examples}

Write {per_class} different statements, one per line, each at most 12 words, about what texts of the
class "{name}" say, so that a statement being true argues for that class. Do not use the words
{forbidden}. Write only the statements, no numbering, no other text."""


def propose_statements(
    task: Task,
    model: str,
    class_names: dict[str, str] | None = None,
    per_class: int = 10,
    examples: int = 5,
    seed: int = 0,
    api_base: str | None = None,
) -> dict[str, list[str]]:
    """``{class: [statements]}`` for every class of ``task``, from the chat ``model`` (a LiteLLM name)."""
    try:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
        import litellm

        litellm.suppress_debug_info = True  # its errors become one line of ours
    except ImportError:
        raise LucidError("lucidlm concepts propose needs LiteLLM: pip install 'lucidlm[propose]'") from None
    if task.spec.is_regression:
        raise LucidError("concepts propose: the task is a regression; statements are tied to classes")
    names = {c: (class_names or {}).get(c, c) for c in task.spec.classes}
    forbidden = sorted({w.lower() for n in names.values() for w in re.findall(r"\w+", n)} | {c.lower() for c in names})
    rng = np.random.default_rng(seed)
    proposed, seen = {}, set()
    for index, label in enumerate(task.spec.classes):
        rows = np.flatnonzero(task.train.labels == index)
        picked = rng.choice(rows, min(examples, len(rows)), replace=False) if len(rows) else []
        prompt = PROMPT.format(
            count=len(picked),
            name=names[label],
            per_class=per_class,
            examples="\n".join(f"- {task.train.texts[i][:500]}" for i in picked),
            forbidden=", ".join(f'"{w}"' for w in forbidden),
        )
        try:
            answer = litellm.completion(
                model=model, messages=[{"role": "user", "content": prompt}], api_base=api_base, temperature=0.0
            )
        except Exception as e:  # the provider's own error, in one line
            raise LucidError(
                f"concepts propose: the chat model {model!r} did not answer ({type(e).__name__}: {str(e)[:300]})"
            ) from None
        kept = []
        for line in (answer.choices[0].message.content or "").splitlines():
            statement = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().strip('"')
            words = {w.lower() for w in re.findall(r"\w+", statement)}
            key = statement.lower().rstrip(".!")
            if not statement or words & set(forbidden) or key in seen:
                continue  # empty, names a class (it would decide by the label's name), or a repeat
            seen.add(key)
            kept.append(statement if statement.endswith((".", "!", "?")) else statement + ".")
        proposed[label] = kept[:per_class]
    return proposed


def write_concept_file(proposed: dict[str, list[str]], path: Path, header: str) -> Path:
    if not any(proposed.values()):
        raise LucidError("concepts propose: the chat model proposed no usable statement; nothing written")
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(
        "".join(f"# {line}\n" for line in header.splitlines())
        + yaml.safe_dump(proposed, allow_unicode=True, sort_keys=False)
    )
    staging.replace(path)
    return path
