"""Scoring a corpus with a trained run (``lucidlm predict RUN --input FILE -o OUT``): CSV, JSONL or
Parquet in, the same out, streamed in chunks of rows.

Each chunk's predictions go to a part file of their own beside the output (``OUT.parts/``),
written whole or not at all; a run killed halfway and started again skips the parts it has. With
several processes (``torchrun`` / ``accelerate launch``) process r scores chunks r, r + N, …;
process 0 joins the parts in input order once all are done. A chunk is batched the same way
whoever scores it, so one process, two, or a resumed run write the same file.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import torch

from .errors import LucidError
from .progress import tracked

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}


def file_format(path: Path) -> str:
    if path.suffix.lower() not in FORMATS:
        raise LucidError(f"{path}: expected a .csv, .jsonl or .parquet file, found {path.suffix or 'no suffix'!r}")
    return FORMATS[path.suffix.lower()]


def text_chunks(path: Path, text_column: str, chunk_rows: int) -> Iterator[list[str]]:
    """The texts of ``path``'s ``text_column``, ``chunk_rows`` at a time, in file order."""
    kind = file_format(path)
    if not path.is_file():
        raise LucidError(f"{path}: no such file")
    if kind == "parquet":
        import pyarrow.parquet as pq

        parquet = pq.ParquetFile(path)
        if text_column not in parquet.schema_arrow.names:
            raise LucidError(f"{path}: no column {text_column!r}; it has {parquet.schema_arrow.names} (--text-column)")
        frames = (batch.to_pandas() for batch in parquet.iter_batches(batch_size=chunk_rows, columns=[text_column]))
    elif kind == "csv":
        frames = pd.read_csv(
            path, usecols=lambda c: c == text_column, chunksize=chunk_rows, dtype=str, keep_default_na=False
        )
    else:
        frames = pd.read_json(path, lines=True, chunksize=chunk_rows, dtype=False)
    first = 0
    for frame in frames:
        if text_column not in frame.columns:
            raise LucidError(f"{path}: no column {text_column!r} (--text-column); it has {list(frame.columns)}")
        texts = frame[text_column].tolist()
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise LucidError(f"{path}: row {first + i + 1}: {text_column!r} is empty or not text ({text!r})")
        first += len(texts)
        yield texts


def count_rows(path: Path, text_column: str, chunk_rows: int) -> int:
    if file_format(path) == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return sum(len(texts) for texts in text_chunks(path, text_column, chunk_rows))


def prediction_records(model, texts: list[str], first_row: int, batch_size: int, explain: bool) -> list[dict]:
    """One flat record per text: its row, label, each class's probability, each concept's value
    and probability (concept models), and with ``explain`` the explanation as JSON."""
    records = []
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        for i, p in enumerate(model.predict(batch)):
            record = {"row": first_row + start + i, "label": p.label}
            record.update({f"probability.{c}": float(v) for c, v in p.probabilities.items()})
            for name, concept in p.concepts.items():
                record[f"concept.{name}"] = concept.value
                record[f"concept.{name}.probability"] = float(concept.probabilities[concept.value])
            if explain:
                record["explanation"] = model.explain(batch[i]).to_json()
            records.append(record)
    return records


def score_corpus(
    model,
    source: Path,
    output: Path,
    text_column: str = "text",
    batch_size: int = 64,
    chunk_rows: int = 1024,
    explain: bool = False,
) -> Path:
    """Predict every row of ``source`` into ``output`` (its format from its suffix); resumable,
    and shared over the processes that run it together."""
    file_format(output)
    parts = output.with_name(output.name + ".parts")
    settings = {
        "source": str(source.resolve()),
        "size": source.stat().st_size if source.is_file() else None,
        "mtime": source.stat().st_mtime if source.is_file() else None,
        "text_column": text_column,
        "chunk_rows": chunk_rows,
        "batch_size": batch_size,
        "explain": explain,
    }
    rank, processes = _process()
    if rank == 0:
        _start_parts(parts, settings)
    _wait_for_all()
    total = count_rows(source, text_column, chunk_rows)
    chunks = (total + chunk_rows - 1) // chunk_rows
    mine = [c for c in range(chunks) if c % processes == rank]
    done = {c for c in mine if (parts / f"{c:08d}.jsonl").is_file()}
    model.eval()
    with torch.no_grad():
        wanted = (
            pair for pair in enumerate(text_chunks(source, text_column, chunk_rows)) if pair[0] in set(mine) - done
        )
        for c, texts in tracked(wanted, len(mine) - len(done), "chunks"):
            _write_whole(
                parts / f"{c:08d}.jsonl",
                "".join(
                    json.dumps(r) + "\n" for r in prediction_records(model, texts, c * chunk_rows, batch_size, explain)
                ),
            )
    _wait_for_all()
    if rank == 0:
        _join(parts, chunks, output)
    _wait_for_all()
    return output


def _start_parts(parts: Path, settings: dict) -> None:
    """The parts folder of this scoring: kept when it was started with the same source and settings
    (a resumed run), started afresh otherwise."""
    recorded = parts / "settings.json"
    if parts.is_dir() and not (recorded.is_file() and json.loads(recorded.read_text()) == settings):
        shutil.rmtree(parts)
    parts.mkdir(parents=True, exist_ok=True)
    if not recorded.is_file():
        _write_whole(recorded, json.dumps(settings))


def _join(parts: Path, chunks: int, output: Path) -> None:
    files = [parts / f"{c:08d}.jsonl" for c in range(chunks)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise LucidError(f"{parts}: parts {missing[:3]} are missing; run the same command again to score them")
    frame = (
        pd.concat([pd.read_json(f, lines=True, dtype=False, precise_float=True) for f in files], ignore_index=True)
        if files
        else pd.DataFrame()
    )
    staging = output.with_name(f".{output.name}.tmp")
    kind = file_format(output)
    if kind == "csv":
        frame.to_csv(staging, index=False)
    elif kind == "jsonl":
        frame.to_json(staging, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(staging, index=False)
    os.replace(staging, output)
    shutil.rmtree(parts)


def _write_whole(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text)
    os.replace(staging, path)


def _process() -> tuple[int, int]:
    from .training import process_state

    state = process_state()
    return state.process_index, state.num_processes


def _wait_for_all() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
