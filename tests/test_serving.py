"""The server under load, on a tiny run over real HTTP: concurrent predictions share forward
passes (in groups of similar length) and answer what one-at-a-time requests do; a full queue answers 503 with Retry-After at
once; explanations are cached within a bound; batches have limits with clear messages."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from lucidlm.models import load_pretrained
from lucidlm.web.app import create_app
from lucidlm.web.schemas import MAX_BATCH_TEXTS, MAX_TEXT_CHARS
from lucidlm.web.serve import serving
from lucidlm.web.service import ModelService
from lucidlm.web.worker import ServingLimits

TEXTS = [
    f"Review {i}: the pasta was {'great' if i % 2 else 'cold'} and the room was {'quiet' if i % 3 else 'loud'}."
    for i in range(8)
]


@pytest.fixture()
def model(tiny_runs):
    return load_pretrained(tiny_runs["joint"])


def count_forward_passes(model) -> list[int]:
    """Wraps ``model.forward_texts``: the list gets each pass's batch size."""
    sizes, forward = [], model.forward_texts

    def counted(texts, pairs=None):
        sizes.append(len(texts))
        return forward(texts, pairs)

    model.forward_texts = counted
    return sizes


def test_concurrent_predictions_share_forward_passes_and_answer_as_alone(model):
    alone = [model.predict(text)[0] for text in TEXTS]
    sizes = count_forward_passes(model)
    app = create_app(model, limits=ServingLimits(max_batch=8, max_wait=0.5))
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda text: client.post("/api/predict", json={"text": text}), TEXTS))
    assert [a.status_code for a in answers] == [200] * 8
    assert sum(sizes) == 8 and len(sizes) < 8 and max(sizes) > 1  # fewer passes than requests
    for answer, expected in zip(answers, alone):
        body = answer.json()
        assert body["text"] == expected.text and body["label"] == expected.label
        assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)
        assert len(body["contributions"]) == 4 and sorted(body["ask_next"]) == sorted(expected.concepts)


def test_a_batch_runs_as_groups_of_similar_length_and_answers_in_its_order(model):
    texts = ["Cold pasta.", TEXTS[0] * 3, "Loud room.", TEXTS[1] * 3]
    alone = [model.predict(text)[0] for text in texts]
    passes, forward = [], model.forward_texts
    model.forward_texts = lambda batch, pairs=None: passes.append(list(batch)) or forward(batch, pairs)
    service = ModelService(model, limits=ServingLimits(length_group=2))
    try:
        answers = service.predict_many(texts).result(timeout=60)
    finally:
        service.close()
    assert [set(p) for p in passes] == [{"Cold pasta.", "Loud room."}, {TEXTS[0] * 3, TEXTS[1] * 3}]  # short with short
    assert [a["text"] for a in answers] == texts
    for answer, expected in zip(answers, alone):
        assert answer["label"] == expected.label
        assert answer["probabilities"] == pytest.approx(expected.probabilities, abs=1e-5)


def test_a_full_queue_answers_503_with_retry_after_at_once_and_recovers(model):
    app = create_app(model, limits=ServingLimits(queue_size=1, retry_after=2))
    release, started = threading.Event(), threading.Event()

    def busy(_):
        started.set()
        release.wait(30)

    worker = app.state.service.worker
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        worker.submit(busy, None)
        assert started.wait(10)  # the worker is busy ...
        waiting = worker.submit(lambda _: None, None)  # ... and the one place in its queue is taken
        refused = client.post("/api/predict", json={"text": TEXTS[0]})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert refused.json()["detail"] == "the model is busy: 1 requests are waiting; retry in 2 s"
        release.set()
        waiting.result(timeout=30)  # the queue has room again
        assert client.post("/api/predict", json={"text": TEXTS[0]}).status_code == 200


def test_explanations_are_cached_within_a_bound(model):
    calls, explain = [], model.explain
    model.explain = lambda text, **options: (calls.append(text), explain(text, steps=2))[1]
    app = create_app(model, limits=ServingLimits(explain_cache=2))
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        first = client.post("/api/explain", json={"text": TEXTS[0]}).json()
        assert client.post("/api/explain", json={"text": TEXTS[0]}).json() == first
        assert calls == [TEXTS[0]]
        for text in TEXTS[1:3]:  # two more: the first one is the least recently used, and goes
            client.post("/api/explain", json={"text": text})
        client.post("/api/explain", json={"text": TEXTS[0]})
        assert calls == [TEXTS[0], TEXTS[1], TEXTS[2], TEXTS[0]]


def test_batch_predictions_have_limits_with_clear_messages(model):
    app = create_app(model)
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        batch = client.post("/api/predict-batch", json={"texts": TEXTS[:3]})
        assert batch.status_code == 200
        assert [a["label"] for a in batch.json()] == [p.label for p in model.predict(TEXTS[:3])]
        too_many = client.post("/api/predict-batch", json={"texts": ["ok"] * (MAX_BATCH_TEXTS + 1)})
        assert too_many.status_code == 422 and too_many.json()["detail"].startswith(
            f"texts: List should have at most {MAX_BATCH_TEXTS}"
        )
        too_long = client.post("/api/predict-batch", json={"texts": ["ok", "x" * (MAX_TEXT_CHARS + 1)]})
        assert too_long.status_code == 422
        assert (
            too_long.json()["detail"]
            == f"texts: text 2: at most {MAX_TEXT_CHARS} characters, found {MAX_TEXT_CHARS + 1}"
        )


def test_a_failure_of_the_model_work_is_a_500_that_names_it_and_the_server_goes_on(model):
    def broken(text, **options):
        raise RuntimeError("Expected all tensors to be on the same device, but found cuda:0 and cpu")

    model.explain = broken
    app = create_app(model)
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        failed = client.post("/api/explain", json={"text": TEXTS[0]})
        assert failed.status_code == 500
        assert failed.json()["detail"] == (
            "the model failed on this request: RuntimeError: Expected all tensors to be on "
            "the same device, but found cuda:0 and cpu"
        )
        assert client.post("/api/predict", json={"text": TEXTS[0]}).status_code == 200  # same connection, same server


def test_the_serving_device_is_the_gpu_when_torch_sees_one_and_a_bad_name_is_one_clear_error():
    import torch

    from lucidlm.errors import LucidError
    from lucidlm.web.serve import serving_device

    assert serving_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert serving_device("cpu") == torch.device("cpu")
    with pytest.raises(LucidError, match="--device: expected auto, cpu, cuda or cuda:N, found 'gpu'"):
        serving_device("gpu")
    if not torch.cuda.is_available():
        with pytest.raises(LucidError, match="--device cuda: torch sees no GPU here; use --device cpu"):
            serving_device("cuda")


def test_cancelled_requests_never_take_the_model_worker_down(model):
    """A request cancelled while it waits (its client went away) is skipped; the worker answers the
    next ones, over the API too, and /api/health says it is alive."""
    app = create_app(model, limits=ServingLimits(max_wait=0.05))
    worker = app.state.service.worker
    release, started = threading.Event(), threading.Event()

    def busy(_):
        started.set()
        release.wait(30)

    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        worker.submit(busy, None)
        assert started.wait(10)
        single = worker.submit(lambda _: "never", None)
        batched = [app.state.service.predict(text) for text in TEXTS[:3]]
        assert single.cancel() and batched[0].cancel() and batched[2].cancel()
        release.set()
        assert batched[1].result(timeout=30)["text"] == TEXTS[1]  # its batch-mates were cancelled
        # A client that gives up mid-request: its job is cancelled while the worker is busy.
        started.clear(), release.clear()
        worker.submit(busy, None)
        assert started.wait(10)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}/api/predict", json={"text": TEXTS[0]}, timeout=0.3)
        release.set()
        assert client.post("/api/predict", json={"text": TEXTS[4]}).status_code == 200
        health = client.get("/api/health")
        assert health.status_code == 200 and health.json()["alive"] and health.json()["waiting"] == 0


def test_health_is_503_when_the_worker_has_stopped(model):
    app = create_app(model)
    app.state.service.close()
    from fastapi.testclient import TestClient

    answer = TestClient(app).get("/api/health")
    assert answer.status_code == 503 and answer.json()["alive"] is False


def test_a_taken_port_is_one_line_before_any_serving_line(tiny_runs):
    import socket

    from typer.testing import CliRunner

    from lucidlm.cli import app as cli

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        result = CliRunner().invoke(cli, ["serve", str(tiny_runs["joint"]), "--port", str(port)])
    finally:
        taken.close()
    assert result.exit_code == 1 and "serving" not in result.stdout
    assert (
        result.stderr.strip()
        == f"error: port {port} on 127.0.0.1 is already in use (another server?); choose another with --port"
    )


def test_the_page_answers_head(model):
    from fastapi.testclient import TestClient

    client = TestClient(create_app(model))
    assert client.head("/").status_code == 200 and client.head("/static/app.js").status_code == 200
