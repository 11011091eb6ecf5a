"""Scoring a corpus (``lucidlm predict RUN --input FILE -o OUT``): CSV, JSONL and Parquet; a run
killed halfway and resumed, and two processes, write the file one uninterrupted process writes."""

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from lucidlm import load_pretrained
from lucidlm.cli import app
from lucidlm.errors import LucidError
from lucidlm.scoring import prediction_records, score_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cebab_small):
    folder = tmp_path_factory.mktemp("corpus")
    texts = (cebab_small.test.texts + cebab_small.dev.texts) * 3  # 288 rows: five chunks of 64
    frame = pd.DataFrame({"id": range(len(texts)), "text": texts})
    frame.to_csv(folder / "rows.csv", index=False)
    frame.to_json(folder / "rows.jsonl", orient="records", lines=True)
    frame.to_parquet(folder / "rows.parquet", index=False)
    return folder


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_every_format_in_and_out_gives_one_row_per_text_in_order(suffix, tiny_runs, corpus, tmp_path):
    out = tmp_path / f"scored{suffix}"
    result = CliRunner().invoke(
        app, ["predict", str(tiny_runs["joint"]), "--input", str(corpus / f"rows{suffix}"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    scored = {".csv": pd.read_csv, ".jsonl": lambda p: pd.read_json(p, lines=True), ".parquet": pd.read_parquet}[
        suffix
    ](out)
    texts = pd.read_csv(corpus / "rows.csv")["text"].tolist()
    assert scored["row"].tolist() == list(range(len(texts)))
    model = load_pretrained(tiny_runs["joint"])
    expected = pd.DataFrame(prediction_records(model, texts[:5], 0, 64, False))
    assert scored["label"].astype(str).tolist()[:5] == expected["label"].astype(str).tolist()
    assert scored["probability.5"].tolist()[:5] == pytest.approx(expected["probability.5"].tolist(), abs=1e-6)
    assert {"concept.food", "concept.food.probability"} <= set(scored.columns)
    assert not (tmp_path / f"scored{suffix}.parts").exists()


def test_a_run_killed_halfway_and_resumed_writes_the_same_file(tiny_runs, corpus, tmp_path, monkeypatch):
    model = load_pretrained(tiny_runs["joint"])
    whole = score_corpus(model, corpus / "rows.csv", tmp_path / "whole.jsonl", chunk_rows=64)
    import lucidlm.scoring as scoring

    calls, original = [], scoring.prediction_records

    def dies_at_the_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed
        return original(*args, **kwargs)

    monkeypatch.setattr(scoring, "prediction_records", dies_at_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        score_corpus(model, corpus / "rows.csv", tmp_path / "resumed.jsonl", chunk_rows=64)
    assert (
        len(list((tmp_path / "resumed.jsonl.parts").glob("0*.jsonl"))) == 2
        and not (tmp_path / "resumed.jsonl").exists()
    )
    calls.clear()
    monkeypatch.setattr(scoring, "prediction_records", lambda *a, **k: calls.append(1) or original(*a, **k))
    score_corpus(model, corpus / "rows.csv", tmp_path / "resumed.jsonl", chunk_rows=64)
    assert len(calls) == 3  # the two parts written before the kill are kept
    assert (tmp_path / "resumed.jsonl").read_bytes() == whole.read_bytes()


def test_two_processes_write_the_file_one_writes(tiny_runs, corpus, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = ["-m", "lucidlm.cli", "predict", str(tiny_runs["joint"]), "--input", str(corpus / "rows.parquet")]
    one = subprocess.run(
        [sys.executable, *command, "-o", str(tmp_path / "one.csv")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert one.returncode == 0, one.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(port),
            *command,
            "-o",
            str(tmp_path / "two.csv"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert two.returncode == 0, two.stderr
    assert (tmp_path / "two.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()


def test_bad_input_is_one_clear_line_naming_the_file_and_row(tiny_runs, tmp_path):
    model = load_pretrained(tiny_runs["joint"])
    (tmp_path / "rows.csv").write_text('text\nGreat food.\n""\n')
    with pytest.raises(LucidError, match=r"rows.csv: row 2: 'text' is empty"):
        score_corpus(model, tmp_path / "rows.csv", tmp_path / "out.csv")
    with pytest.raises(LucidError, match=r"no column 'review'"):
        score_corpus(model, tmp_path / "rows.csv", tmp_path / "out.csv", text_column="review")
    with pytest.raises(LucidError, match=r"expected a \.csv, \.jsonl or \.parquet file"):
        score_corpus(model, tmp_path / "rows.csv", tmp_path / "out.xlsx")
    assert not (tmp_path / "out.csv").exists()
    assert json.loads(CliRunner().invoke(app, ["predict", str(tiny_runs["joint"]), "Great.", "--json"]).output)[0][
        "label"
    ]
