"""``Run``: a run folder as a value (its files named once, in ``layout``)."""

from __future__ import annotations

import json
import shutil

import pytest

from lucidlm.errors import LucidError
from lucidlm.layout import RUN_FILE, STORE_FILE
from lucidlm.run import Run


def test_a_run_reads_what_train_wrote_and_writes_its_record_whole(tiny_runs, tmp_path):
    run = Run(shutil.copytree(tiny_runs["joint"], tmp_path / "joint"))
    assert run.is_saved and run.name == "joint" and run.check_saved() is run
    assert run.record == json.loads((run.path / RUN_FILE).read_text()) and set(run.metrics) == {"dev", "test"}
    assert run.lineage is None and run.evaluation() is None
    assert run.corrections() is None and not (run.path / STORE_FILE).exists()  # reading never creates a store
    fingerprint = run.fingerprint()
    assert len(fingerprint) == 64 and fingerprint == Run(tiny_runs["joint"]).fingerprint()
    run.write_record({**run.record, "note": "kept"})
    assert run.record["note"] == "kept" and not list(run.path.glob(".*.tmp"))
    assert run.load_task().spec.concept_names == run.load_model().spec.concept_names
    (run.path / "model.safetensors").write_bytes(b"changed")
    assert run.fingerprint() != fingerprint


def test_a_folder_that_is_not_a_run_says_what_is_missing(tmp_path):
    with pytest.raises(LucidError, match="no such run folder"):
        Run(tmp_path / "nowhere").check_saved()
    with pytest.raises(LucidError, match="config.json is missing"):
        Run(tmp_path).check_saved()
    (tmp_path / RUN_FILE).write_text("{not json")
    with pytest.raises(LucidError, match=r"run.json: not valid JSON"):
        _ = Run(tmp_path).record
    (tmp_path / RUN_FILE).unlink()
    with pytest.raises(LucidError, match="reading its data needs a run trained by lucidlm train"):
        Run(tmp_path).load_task()
