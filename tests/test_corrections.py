"""The corrections loop on tiny runs: the store (append-only, idempotent, versioned, exported),
users and who may write, the store under concurrent writers and a killed server (SQLite and a real
PostgreSQL server), the review queue, and learning a new run from corrections."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from postgres_server import binaries, free_port, postgres_server
from typer.testing import CliRunner

from lucidlm.cli import app as cli
from lucidlm.corrections import STORE_FILE, CorrectionStore, Record, add_user
from lucidlm.corrections.learn import corrected_split, learn, run_fingerprint
from lucidlm.corrections.queue import ReviewQueue, read_pool
from lucidlm.corrections.store import SCHEMA_VERSION
from lucidlm.data import MISSING
from lucidlm.errors import LucidError
from lucidlm.models import load_pretrained
from lucidlm.web.schemas import MAX_BODY_BYTES
from lucidlm.web.serve import check_exposure, load_app, serving

TEXT = "Great pasta, but we waited an hour for a rude waiter."
needs_postgres = pytest.mark.skipif(
    binaries() is None and not os.environ.get("CI"), reason="no PostgreSQL server binaries (apt-get install postgresql)"
)


def a_record(n: int = 0, **fields) -> Record:
    base = dict(
        kind="correction",
        author="alice",
        run="joint",
        run_fingerprint="f" * 64,
        text=f"text {n}",
        read_values={"food": "Positive"},
        set_values={"food": "Negative"},
        label_before="4",
        label_after="2",
        gold_label=None,
        key=f"k{n}",
    )
    return Record(**{**base, **fields})


@pytest.fixture()
def joint_run(tiny_runs, tmp_path) -> Path:
    """A copy of the tiny joint run, its store empty: tests write to it."""
    return Path(shutil.copytree(tiny_runs["joint"], tmp_path / "joint"))


@pytest.fixture(scope="module")
def postgres_url():
    with postgres_server() as url:
        yield url


# ---- the store ------------------------------------------------------------------------------------
def test_a_record_sent_twice_with_one_key_is_stored_once(tmp_path):
    store = CorrectionStore(tmp_path)
    first = store.append(a_record(1))
    again = store.append(a_record(1, text="a different body under the same key"))
    assert again.id == first.id and again.text == "text 1" and store.count() == 1
    assert (tmp_path / STORE_FILE).is_file() and store.schema_version == SCHEMA_VERSION
    unkeyed = [store.append(a_record(2, key="")) for _ in range(2)]  # no key: each is its own record
    assert unkeyed[0].id != unkeyed[1].id and store.count() == 3


def test_a_retraction_is_a_new_record_and_the_database_refuses_rewrites(tmp_path):
    store = CorrectionStore(tmp_path / "c.sqlite")
    kept, gone = store.append(a_record(1)), store.append(a_record(2))
    retraction = store.retract(gone.id, "bob", "wrong text")
    assert retraction.kind == "retraction" and retraction.retracts == gone.id and retraction.note == "wrong text"
    assert [r.id for r in store.standing()] == [kept.id] and len(store.records()) == 3
    with pytest.raises(LucidError, match="already retracted"):
        store.retract(gone.id, "bob")
    with pytest.raises(LucidError, match="no such correction"):
        store.retract(retraction.id, "bob")
    with sqlite3.connect(tmp_path / "c.sqlite") as raw:
        for statement in ("UPDATE corrections SET author = 'mallory'", "DELETE FROM corrections"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                raw.execute(statement)
    assert [r.author for r in store.records()] == ["alice", "alice", "bob"]


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"kind": "edit"}, "kind"),
        ({"author": ""}, "author"),
        ({"text": "x" * 10_001}, "text: at most"),
        ({"text": "  "}, "text"),
        ({"set_values": {}, "gold_label": None}, "concept values"),
        ({"kind": "retraction", "retracts": None}, "retracts"),
    ],
)
def test_a_malformed_record_is_refused_with_nothing_written(tmp_path, fields, message):
    store = CorrectionStore(tmp_path)
    with pytest.raises(LucidError, match=message):
        store.append(a_record(1, **fields))
    assert store.records() == []


def test_a_store_written_by_a_newer_schema_is_refused(tmp_path):
    CorrectionStore(tmp_path).append(a_record(1))
    with sqlite3.connect(tmp_path / STORE_FILE) as raw:
        raw.execute("UPDATE lucidlm_schema SET version = 99")
    with pytest.raises(LucidError, match="schema version 99 was written by a newer lucidlm"):
        CorrectionStore(tmp_path)


def test_export_round_trips_through_csv_jsonl_and_a_dataset(tmp_path):
    import csv

    from datasets import load_from_disk

    store = CorrectionStore(tmp_path)
    for n in range(3):
        store.append(a_record(n, text=f'text {n}, with a comma and "quotes"\nand a line', gold_label=str(n + 1)))
    store.retract(2, "alice")
    stored = [r.to_dict() for r in store.records()]
    assert store.export(tmp_path / "out.jsonl") == 4
    assert [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()] == stored
    store.export(tmp_path / "out.csv")
    with (tmp_path / "out.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == [r["text"] for r in stored]
    assert [json.loads(r["set_values"]) for r in rows] == [r["set_values"] for r in stored]
    assert store.export(tmp_path / "dataset", standing_only=True) == 2
    dataset = load_from_disk(str(tmp_path / "dataset"))
    assert dataset["id"] == [1, 3] and [json.loads(v) for v in dataset["set_values"]] == [{"food": "Negative"}] * 2
    assert not list(tmp_path.glob(".*.tmp"))


@needs_postgres
def test_postgres_store_is_append_only_and_idempotent(postgres_url):
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    store = CorrectionStore(postgres_url)
    first = store.append(a_record(1, key="pg-1"))
    assert store.append(a_record(1, key="pg-1")).id == first.id and store.schema_version == SCHEMA_VERSION
    for statement in ("UPDATE corrections SET author = 'mallory'", "DELETE FROM corrections"):
        with pytest.raises(DBAPIError, match="append-only"), store.engine.begin() as connection:
            connection.execute(text(statement))
    assert store.get(first.id).author == "alice"


# ---- people and tokens ----------------------------------------------------------------------------
def test_tokens_are_kept_only_as_hashes(tmp_path):
    store = CorrectionStore(tmp_path)
    token = add_user(store, "alice", "corrector")
    assert len(token) >= 40 and token.encode() not in (tmp_path / STORE_FILE).read_bytes()
    assert store.users()[0]["name"] == "alice" and "token_hash" not in store.users()[0]
    with pytest.raises(LucidError, match="--role"):
        add_user(store, "bob", "owner")
    with pytest.raises(LucidError, match="user name"):
        add_user(store, "bob smith", "viewer")


@pytest.fixture()
def served(joint_run, tmp_path):
    """A tiny joint run's app with a store holding a viewer, two correctors and an admin, and a pool."""
    store = CorrectionStore(joint_run)
    tokens = {
        name: add_user(store, name, role)
        for name, role in (("vera", "viewer"), ("alice", "corrector"), ("bob", "corrector"), ("ada", "admin"))
    }
    pool = tmp_path / "pool.jsonl"
    pool.write_text(
        "".join(
            json.dumps({"text": t}) + "\n"
            for t in [TEXT, "Loud room, lovely food.", "The service was slow and the soup cold.", "Fine."]
        )
    )
    client = TestClient(load_app(joint_run, pool=pool, store=store))
    return client, store, tokens


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


WRITES = [
    ("post", "/api/corrections", {"text": TEXT, "values": {"food": "Negative"}}),
    ("post", "/api/corrections/1/retract", {"reason": "oops"}),
    ("get", "/api/queue/next", None),
    ("post", "/api/queue/skip", None),
]


@pytest.mark.parametrize("method, path, body", WRITES, ids=[w[1] for w in WRITES])
def test_every_writing_endpoint_refuses_no_token_a_wrong_one_and_a_viewer(served, method, path, body):
    client, store, tokens = served
    store.append(a_record(1, author="alice", run="joint"))
    before = len(store.records())
    for headers, status, says in (
        ({}, 401, "needs a corrector's token"),
        (bearer("not-a-token"), 401, "not one of"),
        ({"Authorization": "Basic abc"}, 401, "Bearer"),
        (bearer(tokens["vera"]), 403, "vera is a viewer"),
    ):
        answer = client.request(method, path, json=body, headers=headers)
        assert answer.status_code == status and says in answer.json()["detail"], (headers, answer.text)
        if status == 401:
            assert answer.headers["www-authenticate"] == "Bearer"
    assert len(store.records()) == before and client.app.state.service.queue.leases == {}


def test_a_corrector_records_and_retracts_their_own_and_an_admin_anyones(served, joint_run):
    client, store, tokens = served
    assert client.get("/api/me", headers=bearer(tokens["alice"])).json() == {"name": "alice", "role": "corrector"}
    assert client.get("/api/me").json() == {"name": None, "role": "viewer"}
    answer = client.post(
        "/api/corrections",
        headers=bearer(tokens["alice"]),
        json={"text": TEXT, "values": {"food": "Negative"}, "label": "2", "key": "page-1", "note": "rude"},
    )
    assert answer.status_code == 200, answer.text
    record = answer.json()["record"]
    assert record["author"] == "alice" and record["set_values"] == {"food": "Negative"} and record["gold_label"] == "2"
    assert record["run"] == "joint" and record["run_fingerprint"] == run_fingerprint(joint_run)
    assert record["label_after"] == answer.json()["result"]["after"]["label"] and set(record["read_values"]) == {
        "food",
        "ambiance",
        "service",
        "noise",
    }
    again = client.post(
        "/api/corrections",
        headers=bearer(tokens["alice"]),
        json={"text": TEXT, "values": {"food": "Negative"}, "label": "2", "key": "page-1"},
    )
    assert again.json()["record"]["id"] == record["id"] and store.count() == 1
    info = client.get("/api/info").json()["corrections"]
    assert info["recording"] and info["users"] == 4 and info["waiting"] == 1 and info["queue"]["waiting"] == 3
    denied = client.post(f"/api/corrections/{record['id']}/retract", headers=bearer(tokens["bob"]), json={})
    assert denied.status_code == 403 and "alice's" in denied.json()["detail"]
    retracted = client.post(
        f"/api/corrections/{record['id']}/retract", headers=bearer(tokens["ada"]), json={"reason": "dup"}
    )
    assert retracted.status_code == 200 and retracted.json()["author"] == "ada" and store.count() == 0
    listed = client.get("/api/corrections").json()
    assert [r["kind"] for r in listed] == ["correction", "retraction"]


@pytest.mark.parametrize(
    "body, status",
    [
        (b'{"text": "x", "values": ', 422),
        (b'{"text": "x"}', 422),
        (b'{"text": "x", "values": {"food": "Salty"}}', 422),
        (b'{"text": "x", "values": {}, "label": "9"}', 422),
        (json.dumps({"text": "x" * (MAX_BODY_BYTES + 1), "label": "1"}).encode(), 413),
    ],
)
def test_a_malformed_or_oversized_correction_is_refused_with_nothing_written(served, body, status):
    client, store, tokens = served
    answer = client.post(
        "/api/corrections", content=body, headers={**bearer(tokens["alice"]), "Content-Type": "application/json"}
    )
    assert answer.status_code == status and answer.json()["detail"], answer.text
    assert store.records() == []


def test_tokens_never_reach_the_logs_the_page_or_the_run_folder(served, joint_run, caplog):
    client, store, tokens = served
    with caplog.at_level("DEBUG"):
        for name in ("alice", "vera"):
            client.post("/api/corrections", headers=bearer(tokens[name]), json={"text": TEXT, "label": "3"})
        client.get("/api/queue/next", headers=bearer(tokens["bob"]))
    shown = caplog.text + "".join(client.get(p).text for p in ("/", "/app.js", "/api/info", "/api/corrections"))
    on_disk = b"".join(p.read_bytes() for p in joint_run.rglob("*") if p.is_file())
    for token in tokens.values():
        assert token not in shown and token.encode() not in on_disk


def test_serving_beyond_this_machine_needs_users(tmp_path):
    store = CorrectionStore(tmp_path)
    check_exposure("127.0.0.1", store)
    with pytest.raises(LucidError, match="--host 0.0.0.0: serving beyond this machine needs users"):
        check_exposure("0.0.0.0", store)
    add_user(store, "ada", "admin")
    check_exposure("0.0.0.0", store)


# ---- the review queue -----------------------------------------------------------------------------
def test_two_people_never_get_the_same_text_and_reviewed_or_skipped_texts_are_passed(served):
    client, store, tokens = served
    alice = client.get("/api/queue/next", headers=bearer(tokens["alice"])).json()
    bob = client.get("/api/queue/next", headers=bearer(tokens["bob"])).json()
    assert (
        alice["text"] != bob["text"]
        and alice["remaining"] == 4
        and alice["ask"] in ("food", "ambiance", "service", "noise")
    )
    assert client.get("/api/queue/next", headers=bearer(tokens["alice"])).json()["text"] == alice["text"]  # still hers
    client.post(
        "/api/corrections",
        headers=bearer(tokens["alice"]),
        json={"text": alice["text"], "values": {alice["ask"]: "unknown"}},
    )
    following = client.get("/api/queue/next", headers=bearer(tokens["alice"])).json()
    assert following["text"] not in (alice["text"], bob["text"]) and following["remaining"] == 3
    skipped = client.post("/api/queue/skip", headers=bearer(tokens["alice"])).json()
    assert skipped["text"] not in (alice["text"], bob["text"], following["text"])
    assert client.post("/api/queue/skip", headers=bearer(tokens["alice"])).json() == {  # nothing left for alice
        "text": None,
        "ask": None,
        "position": None,
        "priority": None,
        "remaining": 3,
    }
    client.post("/api/queue/skip", headers=bearer(tokens["bob"]))  # bob's text goes back to the others
    assert client.get("/api/queue/next", headers=bearer(tokens["ada"])).json()["text"] in (
        bob["text"],
        following["text"],
        skipped["text"],
    )


def test_the_queue_orders_by_the_policy_and_a_lease_expires(joint_run):
    model, store = load_pretrained(joint_run), CorrectionStore(joint_run)
    texts = [TEXT, "Loud room, lovely food.", "Cold soup.", "We loved it."]
    queue = ReviewQueue.build(model, texts, store, "joint", "uncertainty", lease_seconds=0.05)
    assert [queue.texts[i] for i in queue.order] == [texts[i] for i in np.argsort(-queue.priority, kind="stable")]
    first = queue.next("alice")
    assert first.position == 0 and queue.next("bob").text != first.text
    time.sleep(0.1)
    assert queue.next("bob").text == first.text  # alice's lease ran out
    with pytest.raises(LucidError, match="--policy"):
        ReviewQueue.build(model, texts, store, "joint", "alphabetical")


def test_a_pool_file_is_read_or_refused_by_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b"], "id": [1, 2]}), tmp_path / "pool.parquet")
    assert read_pool(tmp_path / "pool.parquet") == ["a", "b"]
    (tmp_path / "pool.csv").write_text('text\nfine\n\n" "\n')
    with pytest.raises(LucidError, match=r"pool.csv, row 2, field 'text'"):
        read_pool(tmp_path / "pool.csv")
    (tmp_path / "other.csv").write_text("review\nfine\n")
    with pytest.raises(LucidError, match="needs a 'text' column"):
        read_pool(tmp_path / "other.csv")


# ---- under load and faults ------------------------------------------------------------------------
def hammer(url: str, token: str, writers: int, each: int) -> list[int]:
    """``writers`` threads post ``each`` corrections apiece, every one twice (a client retrying):
    the ids the server answered."""

    def write(w: int) -> list[int]:
        ids = []
        with httpx.Client(base_url=url, headers=bearer(token), timeout=60) as http:
            for n in range(each):
                body = {"text": f"writer {w}, review {n}: the food was cold.", "label": "2", "key": f"w{w}-{n}"}
                answers = [http.post("/api/corrections", json=body) for _ in range(2)]
                assert [a.status_code for a in answers] == [200, 200], answers[0].text
                assert answers[0].json()["record"]["id"] == answers[1].json()["record"]["id"]
                ids.append(answers[0].json()["record"]["id"])
        return ids

    with ThreadPoolExecutor(writers) as pool:
        return [i for ids in pool.map(write, range(writers)) for i in ids]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=needs_postgres)])
def test_sixteen_concurrent_writers_store_every_record_exactly_once(joint_run, backend, request):
    store = CorrectionStore(request.getfixturevalue("postgres_url") if backend == "postgresql" else joint_run)
    token = add_user(store, f"writer-{backend}", "corrector")
    with serving(load_app(joint_run, store=store)) as url:
        ids = hammer(url, token, writers=16, each=12)
    keys = [r.key for r in store.records() if r.key.startswith("w")]
    assert len(ids) == len(set(ids)) == 16 * 12 and len(keys) == len(set(keys)) == 16 * 12
    assert {f"w{w}-{n}" for w in range(16) for n in range(12)} == set(keys)


def test_a_killed_server_loses_no_answered_record_and_leaves_a_readable_store(joint_run):
    store = CorrectionStore(joint_run)
    token = add_user(store, "alice", "corrector")
    store.close()
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "lucidlm"), "serve", str(joint_run), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url, answered, stop = f"http://127.0.0.1:{port}", [], threading.Event()
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stderr.read().decode()[-2000:]
            time.sleep(0.2)

        def stream(w: int) -> None:
            with httpx.Client(base_url=url, headers=bearer(token), timeout=10) as http:
                for n in range(10_000):
                    if stop.is_set():
                        return
                    try:
                        answer = http.post(
                            "/api/corrections", json={"text": f"{w}/{n}: cold soup.", "label": "1", "key": f"s{w}-{n}"}
                        )
                    except httpx.TransportError:
                        return
                    if answer.status_code == 200:
                        answered.append(f"s{w}-{n}")

        threads = [threading.Thread(target=stream, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        while len(answered) < 40:
            assert server.poll() is None
            time.sleep(0.01)
        os.kill(server.pid, signal.SIGKILL)
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(30)
    with sqlite3.connect(joint_run / STORE_FILE) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {r.key for r in CorrectionStore(joint_run).records()}
    assert len(answered) >= 40 and set(answered) <= stored


# ---- learning from corrections ----------------------------------------------------------------------
def test_corrections_become_rows_whose_untouched_values_are_not_labels(cebab_small):
    spec = cebab_small.spec
    records = [
        a_record(1, id=1, set_values={"service": "Negative"}),
        a_record(2, id=2, text="text 1", set_values={"food": "Positive", "service": "Positive"}, gold_label="4"),
        a_record(3, id=3, set_values={}, gold_label="1"),
    ]
    split = corrected_split(records, spec)
    assert split.texts == ["text 1", "text 3"] and split.ids == ["1,2", "3"]
    food, service = spec.concept_names.index("food"), spec.concept_names.index("service")
    assert split.concepts[0, service] == spec.concept("service").index("Positive")  # the later record wins
    assert split.concepts[0, food] == spec.concept("food").index("Positive")
    assert (split.concepts[1] == MISSING).all() and list(split.labels) == [
        spec.classes.index("4"),
        spec.classes.index("1"),
    ]
    ambiance = spec.concept_names.index("ambiance")
    assert split.concepts[0, ambiance] == MISSING
    with pytest.raises(LucidError, match="record 9: concept 'food' = 'Salty'"):
        corrected_split([a_record(9, id=9, set_values={"food": "Salty"})], spec)


@pytest.mark.parametrize("kind", ["joint", "sparse", "proto"])
def test_learn_trains_a_new_run_that_records_its_lineage(tiny_runs, tmp_path, kind):
    run = Path(shutil.copytree(tiny_runs[kind], tmp_path / kind))
    store = CorrectionStore(run)
    model, fingerprint = load_pretrained(run), run_fingerprint(run)
    from lucidlm.corrections.recording import make_record

    values = {} if kind == "proto" else {"food": "Negative"}
    made = [
        store.append(
            make_record(
                model, f"{TEXT} ({n})", values, "1" if kind == "proto" or n % 2 else None, "alice", kind, fingerprint
            )[0]
        )
        for n in range(4)
    ]
    store.retract(made[0].id, "alice")
    store.append(a_record(99, run_fingerprint="0" * 64, gold_label="1"))  # another run's: not learned from
    child, record = learn(run, tmp_path / "child")
    lineage = record["lineage"]
    assert lineage["parent"] == str(run.resolve()) and lineage["parent_fingerprint"] == fingerprint
    assert lineage["records"] == [m.id for m in made[1:]] and lineage["count"] == 3 and lineage["texts"] == 3
    assert lineage["concept_labels"] == (0 if kind == "proto" else 3) and lineage["labels"] == (
        3 if kind == "proto" else 2
    )
    assert lineage["parent_metrics"] == json.loads((run / "run.json").read_text())["metrics"]
    assert set(record["metrics"]) == {"dev", "test"} and (tmp_path / "child" / "run.json").is_file()
    assert not (tmp_path / "child" / "checkpoint").exists()
    parent_training = json.loads((run / "run.json").read_text())["experiment"]["training"]
    learned = record["experiment"]["training"]  # a continuation: the trained heads at the backbone's rate
    assert (
        learned["head_learning_rate"] == learned.get("learning_rate", 5e-5)
        and learned["epochs"] == parent_training["epochs"]
    )
    assert CorrectionStore(tmp_path / "child").count() == 4  # its store continues the parent's (the other run's too)
    assert run_fingerprint(tmp_path / "child") != fingerprint
    assert load_pretrained(tmp_path / "child").predict([TEXT])[0].label == child.predict([TEXT])[0].label
    with pytest.raises(LucidError, match="holds a run already"):
        learn(run, tmp_path / "child")


def test_learn_refuses_what_it_cannot_learn(tiny_runs, tmp_path):
    run = Path(shutil.copytree(tiny_runs["proto"], tmp_path / "proto"))
    with pytest.raises(LucidError, match="no standing corrections"):
        learn(run, tmp_path / "child")
    concepts_only = [a_record(1, id=1)]
    with pytest.raises(LucidError, match="a prototype model learns from labels"):
        learn(run, tmp_path / "child", records=concepts_only)
    with pytest.raises(LucidError, match="its own folder"):
        learn(run, run, records=concepts_only)
    with pytest.raises(LucidError, match="TrainingConfig's fields"):
        learn(run, tmp_path / "child", records=[a_record(1, id=1, gold_label="1")], training={"learning_speed": 1})
    assert not (tmp_path / "child" / "run.json").exists()


# ---- the command line -------------------------------------------------------------------------------
def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def test_the_cli_records_lists_exports_retracts_and_learns(joint_run, tmp_path):
    recorded = invoke(
        "intervene", joint_run, TEXT, "--set", "food=Negative", "--record", "--label", "2", "--by", "alice", "--json"
    )
    assert recorded.exit_code == 0, recorded.output
    record = json.loads(recorded.stdout)["record"]
    assert record["author"] == "alice" and record["set_values"] == {"food": "Negative"} and record["gold_label"] == "2"
    listed = invoke("corrections", "list", joint_run, "--json")
    assert [r["id"] for r in json.loads(listed.stdout)] == [record["id"]]
    assert invoke("corrections", "export", joint_run, "-o", tmp_path / "out.jsonl").exit_code == 0
    assert json.loads((tmp_path / "out.jsonl").read_text())["key"] == record["key"]
    assert invoke("--help").exit_code == 0 and "learn" in invoke("--help").stdout
    learned = invoke("learn", joint_run, "-o", tmp_path / "child", "--epochs", "2", "--json")
    assert learned.exit_code == 0, learned.output
    assert json.loads(learned.stdout)["lineage"]["records"] == [record["id"]]
    assert json.loads(learned.stdout)["experiment"]["training"]["epochs"] == 2
    from lucidlm.web.report import build_report

    parent_page, child_page = (build_report(run, limit=4, examples=0) for run in (joint_run, tmp_path / "child"))
    assert "trained from its data, not learned from corrections" in parent_page
    assert "1 standing correction(s), 0 retraction(s), by 1 people (alice)" in parent_page
    assert "<strong>1</strong> of this run's wait to be learned" in parent_page
    assert "Learned from <strong>1</strong> correction(s) of 1 text(s) (1 concept values, 1 labels)" in child_page
    assert "<strong>0</strong> of this run's wait to be learned" in child_page  # learned: made on its parent
    assert child_page.count("points</td>") == 2  # dev and test beside the parent's
    retracted = invoke("corrections", "retract", joint_run, record["id"], "--reason", "typo", "--by", "alice")
    assert retracted.exit_code == 0 and CorrectionStore(joint_run).count() == 0
    refused = invoke("intervene", joint_run, TEXT, "--set", "food=Salty", "--record")
    assert refused.exit_code == 1 and "Salty" in refused.output and len(CorrectionStore(joint_run).records()) == 2


def test_a_store_with_users_needs_their_token_on_the_command_line(joint_run, tmp_path):
    added = invoke("users", "add", "alice", "--role", "corrector", "--store", joint_run)
    assert added.exit_code == 0
    token = added.stdout.strip()
    admin = invoke("users", "add", "ada", "--role", "admin", "--store", joint_run).stdout.strip()
    assert [u["name"] for u in json.loads(invoke("users", "list", "--store", joint_run, "--json").stdout)] == [
        "ada",
        "alice",
    ]
    nobody = invoke("intervene", joint_run, TEXT, "--set", "food=Negative", "--record")
    assert nobody.exit_code == 1 and "LUCIDLM_TOKEN" in nobody.output
    wrong = invoke("intervene", joint_run, TEXT, "--set", "food=Negative", "--record", env={"LUCIDLM_TOKEN": "nope"})
    assert wrong.exit_code == 1 and "not the token" in wrong.output
    ok = invoke(
        "intervene", joint_run, TEXT, "--set", "food=Negative", "--record", "--json", env={"LUCIDLM_TOKEN": token}
    )
    assert ok.exit_code == 0 and json.loads(ok.stdout)["record"]["author"] == "alice"
    as_corrector = invoke("learn", joint_run, "-o", tmp_path / "child", env={"LUCIDLM_TOKEN": token})
    assert as_corrector.exit_code == 1 and "alice is a corrector: this needs an admin" in as_corrector.output
    assert invoke("users", "remove", "alice", "--store", joint_run).exit_code == 0
    gone = invoke("intervene", joint_run, TEXT, "--set", "food=Negative", "--record", env={"LUCIDLM_TOKEN": token})
    assert gone.exit_code == 1 and len(CorrectionStore(joint_run).records()) == 1
    retracted = invoke("corrections", "retract", joint_run, 1, env={"LUCIDLM_TOKEN": admin})
    assert retracted.exit_code == 0 and CorrectionStore(joint_run).records()[-1].author == "ada"
