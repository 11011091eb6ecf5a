"""Read rows (dicts of field -> value) from CSV, TSV, JSON and JSONL files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import LucidError

TABLE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")


def read_rows(path: str | Path) -> list[dict]:
    """All rows of a table file, as dicts. The format follows the file's suffix."""
    path = Path(path)
    if not path.is_file():
        raise LucidError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise LucidError(f"{path}: unsupported file type {suffix!r}; expected one of {list(TABLE_SUFFIXES)}")
    try:
        with path.open(encoding="utf-8", newline="") as f:
            if suffix in (".csv", ".tsv"):
                rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
            elif suffix == ".jsonl":
                rows = [_json_line(path, n, line) for n, line in enumerate(f, 1) if line.strip()]
            else:
                rows = json.load(f)
    except UnicodeDecodeError as e:
        raise LucidError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise LucidError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise LucidError(f"{path}: expected a JSON array of objects (one object a row)")
    if not rows:
        raise LucidError(f"{path}: the file has no rows")
    return rows


def _json_line(path: Path, line_number: int, line: str) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise LucidError(f"{path}, line {line_number}: invalid JSON: {e.msg}") from None
    if not isinstance(row, dict):
        raise LucidError(f"{path}, line {line_number}: expected a JSON object, found {type(row).__name__}")
    return row
