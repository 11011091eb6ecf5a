"""The web API of ``lucidlm serve`` on tiny runs: answers equal the library's values, limits give
clear 4xx answers, the CLI listens on localhost by default, and schemathesis finds no 5xx."""

from __future__ import annotations

import shutil

import pytest
import schemathesis
import torch
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from typer.testing import CliRunner

from lucidlm.cli import app as cli
from lucidlm.models import ConceptBottleneckLM, load_pretrained
from lucidlm.web.app import create_app
from lucidlm.web.schemas import MAX_BODY_BYTES, MAX_TEXT_CHARS

TEXT = "Great pasta, but we waited an hour."


@pytest.fixture(scope="module")
def runs(tiny_runs):
    return tiny_runs


@pytest.fixture(scope="module")
def models(runs):
    return {kind: load_pretrained(run) for kind, run in runs.items()}


@pytest.fixture(scope="module")
def clients(models, runs):
    return {kind: TestClient(create_app(model, runs[kind])) for kind, model in models.items()}


def test_info_names_the_run_and_its_concepts(clients):
    joint = clients["joint"].get("/api/info").json()
    assert joint["run"] == "joint" and joint["family"] == "bottleneck" and joint["classes"] == ["1", "2", "3", "4", "5"]
    assert [c["name"] for c in joint["concepts"]] == ["food", "ambiance", "service", "noise"]
    assert joint["concepts"][0]["values"] == ["Negative", "Positive", "unknown"]
    assert (
        joint["can_intervene"] and not joint["can_intervene_subnetwork"] and joint["max_text_chars"] == MAX_TEXT_CHARS
    )
    assert not joint["can_confirm"]  # scalar logits: a confirmed value changes nothing
    assert clients["sparse"].get("/api/info").json()["can_intervene_subnetwork"]
    proto = clients["proto"].get("/api/info").json()
    assert proto["family"] == "prototype" and proto["concepts"] == [] and not proto["can_intervene"]


@pytest.mark.parametrize(
    "layer, can_confirm", [({}, False), ({"concept_activation": "probs"}, True), ({"concept_layer": "embedding"}, True)]
)
def test_info_says_where_confirming_a_value_makes_it_certain(tiny_bert_dir, cebab_small, layer, can_confirm):
    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, **layer)
    with TestClient(create_app(model)) as client:
        assert client.get("/api/info").json()["can_confirm"] is can_confirm


def test_predict_equals_the_model_and_contributions_sum_to_the_logit(clients, models):
    answer = clients["joint"].post("/api/predict", json={"text": TEXT})
    assert answer.status_code == 200
    body, model = answer.json(), models["joint"]
    expected = model.predict([TEXT])[0]
    assert body["label"] == expected.label
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    assert {k: v["value"] for k, v in body["concepts"].items()} == {k: v.value for k, v in expected.concepts.items()}
    # The label's (calibrated) logit is the sum of the concepts' contributions plus the bias, both over T.
    logits = model.forward_texts([TEXT]).label_logits[0]
    row = model.spec.label_index(body["label"])
    total = sum(c["contribution"] for c in body["contributions"]) + float(
        model.calibrated(model.label_head.bias)[row].detach()
    )
    assert total == pytest.approx(float(logits[row]), abs=1e-4)
    assert [c["concept"] for c in body["contributions"]] == ["food", "ambiance", "service", "noise"]
    # each split into what the value and what the text carries, and the values' share, as explain gives them
    explained = model.explain(TEXT, steps=1)
    assert [(c["from_value"], c["from_text"]) for c in body["contributions"]] == [
        pytest.approx((c.from_value, c.from_text), abs=1e-6) for c in explained.concepts
    ]
    assert body["concept_values_share"] == pytest.approx(explained.concept_values_share, abs=1e-6)
    # the concepts in the order the expected-label-change policy asks about them
    from lucidlm.intervene import INTERVENTION_POLICIES, suggest_corrections

    states = model.forward_texts([TEXT]).concept_states
    order = INTERVENTION_POLICIES.get("label_change")(model, states)[0]
    assert body["ask_next"] == [model.spec.concepts[k].name for k in order]
    assert body["suggestion"] == pytest.approx(vars(suggest_corrections(model, states)[0]))
    assert body["suggestion"]["concept"] == body["ask_next"][0]
    assert sorted(body["ask_next"]) == sorted(["food", "ambiance", "service", "noise"])
    assert clients["proto"].post("/api/predict", json={"text": TEXT}).json()["ask_next"] == []


def test_a_long_text_is_answered_as_evaluate_reads_it_and_says_so(clients, models):
    long = "The pasta was cold and the waiter was rude. " * 30
    body = clients["joint"].post("/api/predict", json={"text": long}).json()
    expected = models["joint"].predict(long)[0]
    assert body["truncated"] and body["tokens_read"] == 128 and body["tokens_total"] == expected.tokens_total > 128
    assert body["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    short = clients["joint"].post("/api/predict", json={"text": TEXT}).json()
    assert not short["truncated"] and short["tokens_read"] == short["tokens_total"]


def test_intervene_sets_the_values_and_keeps_before_as_predicted(clients):
    client = clients["joint"]
    predicted = client.post("/api/predict", json={"text": TEXT}).json()
    answer = client.post("/api/intervene", json={"text": TEXT, "values": {"service": "Positive", "food": "Negative"}})
    assert answer.status_code == 200
    result = answer.json()
    assert result["before"]["label"] == predicted["label"]
    assert result["before"]["probabilities"] == pytest.approx(predicted["probabilities"], abs=1e-5)
    assert result["after"]["concepts"]["service"]["value"] == "Positive"
    assert result["after"]["concepts"]["food"]["value"] == "Negative"
    assert result["label_changed"] == (result["before"]["label"] != result["after"]["label"])


def test_explain_returns_the_explanation_of_each_family(clients, models):
    joint = clients["joint"].post("/api/explain", json={"text": TEXT}).json()
    assert [t["target"] for t in joint["tokens"]] == ["food", "ambiance", "service", "noise", "label"]
    assert joint["tokens"][0]["tokens"][0] == "[CLS]" and len(joint["tokens"][0]["scores"]) == len(
        joint["tokens"][0]["tokens"]
    )
    assert joint["subnetworks"] is None and joint["prototypes"] == []

    sparse = clients["sparse"].post("/api/explain", json={"text": TEXT}).json()
    assert sparse["subnetworks"]["density"]["food"] == pytest.approx(0.5, abs=0.01)
    assert len(sparse["subnetworks"]["jaccard"]) == 4

    proto = clients["proto"].post("/api/explain", json={"text": TEXT}).json()
    assert [t["target"] for t in proto["tokens"]] == ["label", "attention"]
    assert sum(proto["tokens"][1]["scores"]) == pytest.approx(1.0, abs=1e-4)
    nearest = models["proto"].projection.examples[proto["prototypes"][0]["prototype"]]
    assert [e["text"] for e in proto["prototypes"][0]["nearest_examples"]] == [e.text for e in nearest]


# A zero-width space (removed before tokenising), an accent the tokenizer strips, an emoji it does
# not know ([UNK]), a word it cuts into pieces, Arabic letters, CJK characters one token each.
WRITTEN = "Le café\u200b était bon 😀 limoncello, مطعم رائع 寿司"
WORDS = ["Le", "café", "était", "bon", "😀", "limoncello", ",", "مطعم", "رائع", "寿", "司"]


def test_explain_shows_each_word_in_the_writers_characters(clients):
    """Every attribution maps its tokens to the user's characters (offsets of a fast tokenizer):
    groups are the words as written, each its tokens' summed score, and they and the spaces
    between them give the text back (less the invisible characters the model never reads)."""
    body = clients["joint"].post("/api/explain", json={"text": WRITTEN}).json()
    for attribution in body["tokens"]:
        groups, tokens, scores = attribution["groups"], attribution["tokens"], attribution["scores"]
        assert [g["text"] for g in groups] == WORDS
        assert "".join(g["before"] + g["text"] for g in groups) + attribution["unread"] == WRITTEN.replace("\u200b", "")
        limoncello = groups[WORDS.index("limoncello")]
        assert [tokens[i] for i in limoncello["tokens"]] == ["limo", "##nce", "##llo"]
        assert limoncello["score"] == pytest.approx(sum(scores[i] for i in limoncello["tokens"]))
        shown = [i for g in groups for i in g["tokens"]]
        assert shown == [i for i, special in enumerate(attribution["special"]) if not special]
        spans = {tokens[i]: attribution["spans"][i] for i in shown}
        assert WRITTEN[slice(*spans["cafe"])] == "café" and WRITTEN[slice(*spans["eta"])] == "éta"  # after the U+200B
        assert attribution["spans"][0] is None and attribution["unread"] == ""
        if attribution["method"].startswith("integrated_gradients"):  # [UNK] is a word, not the frame
            assert groups[WORDS.index("😀")]["score"] != 0


def test_token_groups_of_byte_level_bpe_and_of_a_truncated_text(tiny_gpt2_dir, tiny_bert_dir):
    """Byte-level BPE cuts é, the emoji and Arabic letters into bytes, and its tokens carry their
    spaces: the groups are still the written words. A text cut at ``max_length`` keeps its unread
    end apart; without the text (or offsets) words are rebuilt from the tokens, pieces joined."""
    from transformers import AutoTokenizer

    from lucidlm.data.collate import TextEncoder
    from lucidlm.explain.tokens import token_attribution

    gpt2 = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    gpt2.pad_token = gpt2.eos_token
    read = WRITTEN.replace("\u200b", "")
    ids = TextEncoder(gpt2, 128).batch([WRITTEN])["input_ids"][0].tolist()
    attribution = token_attribution(gpt2, ids, [1.0] * len(ids), "label", "test", WRITTEN)
    assert [g.text for g in attribution.groups] == [
        "Le",
        "café",
        "était",
        "bon",
        "😀",
        "limoncello",
        ",",
        "مطعم",
        "رائع",
        "寿司",
    ]
    assert "".join(g.before + g.text for g in attribution.groups) == read
    assert sum(g.score for g in attribution.groups) == len(ids)  # every token, in one word or another

    bert = AutoTokenizer.from_pretrained(tiny_bert_dir)
    ids = TextEncoder(bert, 8).batch([WRITTEN])["input_ids"][0].tolist()
    cut = token_attribution(bert, ids, [0.5] * len(ids), "label", "test", WRITTEN)
    assert [g.text for g in cut.groups] == ["Le", "café", "était", "bon", "😀"]
    assert cut.unread == " limoncello, مطعم رائع 寿司"
    ids = TextEncoder(bert, 128).batch([WRITTEN])["input_ids"][0].tolist()
    rebuilt = token_attribution(bert, ids, [0.5] * len(ids), "label", "test")
    assert [g.text for g in rebuilt.groups][4:7] == ["[UNK]", "limoncello", ","]
    assert rebuilt.spans == [None] * len(ids)


def test_subnetwork_intervention_never_commits(clients, models):
    masks = {name: layer.mask.clone() for name, layer in models["sparse"].subnetworks.items()}
    answer = clients["sparse"].post(
        "/api/intervene-subnetwork",
        json={"text": TEXT, "concept": "service", "value": "Negative", "fraction": 0.3, "score": "taylor"},
    )
    assert answer.status_code == 200
    result = answer.json()
    assert (
        result["weights_changed"] > 0
        and result["committed"] is False
        and (result["fraction"], result["score"]) == (0.3, "taylor")
    )
    assert all(torch.equal(models["sparse"].subnetworks[name].mask, mask) for name, mask in masks.items())


@pytest.mark.parametrize(
    "kind, path, body, message",
    [
        (
            "joint",
            "/api/intervene-subnetwork",
            {"text": TEXT, "concept": "service", "value": "Negative"},
            "a bottleneck model cannot take a SubnetworkRewiring correction; it takes ConceptValues",
        ),
        (
            "proto",
            "/api/intervene",
            {"text": TEXT, "values": {"service": "Negative"}},
            "a prototype model cannot take a ConceptValues correction; it takes no corrections",
        ),
    ],
)
def test_what_a_family_cannot_do_is_a_400_that_says_so(clients, kind, path, body, message):
    answer = clients[kind].post(path, json=body)
    assert answer.status_code == 400 and message in answer.json()["detail"]


@pytest.mark.parametrize(
    "body, status, message",
    [
        (
            {"text": "a" * (MAX_TEXT_CHARS + 1)},
            422,
            f"text: at most {MAX_TEXT_CHARS} characters, found {MAX_TEXT_CHARS + 1}",
        ),
        ({"text": "   "}, 422, "text: expected some words"),
        ({"text": TEXT, "path": "/etc/passwd"}, 422, "path: Extra inputs are not permitted"),
        ({"txt": TEXT}, 422, "text: Field required"),
        ({"text": "x" * (MAX_BODY_BYTES + 10)}, 413, f"at most {MAX_BODY_BYTES} bytes"),
    ],
)
def test_invalid_text_gets_a_4xx_naming_the_field_and_limit(clients, body, status, message):
    answer = clients["joint"].post("/api/predict", json=body)
    assert answer.status_code == status
    assert message in answer.json()["detail"]


def test_malformed_json_and_unknown_concepts_are_422(clients):
    client = clients["joint"]
    broken = client.post("/api/predict", content=b'{"text": "Great', headers={"content-type": "application/json"})
    assert broken.status_code == 422 and broken.json()["detail"].startswith("malformed JSON")
    surrogate = client.post(
        "/api/predict", content=b'{"text": "\\ud800"}', headers={"content-type": "application/json"}
    )
    assert surrogate.status_code == 422 and surrogate.json()["detail"].startswith("text:")
    unknown = client.post("/api/intervene", json={"text": TEXT, "values": {"decor": "Positive"}})
    assert unknown.status_code == 422 and "unknown concept 'decor'" in unknown.json()["detail"]
    value = client.post("/api/intervene", json={"text": TEXT, "values": {"food": "Tasty"}})
    assert value.status_code == 422 and "concept 'food': unknown value 'Tasty'" in value.json()["detail"]
    empty = client.post("/api/intervene", json={"text": TEXT, "values": {}})
    assert empty.status_code == 422 and empty.json()["detail"].startswith("values:")


def test_no_endpoint_takes_a_path_and_the_page_is_served_with_a_strict_policy(clients):
    client = clients["joint"]
    schema = client.get("/openapi.json").json()
    fields = {
        name
        for component in schema["components"]["schemas"].values()
        if component["title"].endswith("Request")
        for name in component.get("properties", {})
    }
    # the corrections' own fields: the label a person gives, a note, an idempotency key, a reason
    assert fields == {
        "text",
        "texts",
        "values",
        "concept",
        "value",
        "fraction",
        "score",
        "label",
        "note",
        "key",
        "reason",
    }
    parameters = [
        p
        for methods in schema["paths"].values()
        for operation in methods.values()
        for p in operation.get("parameters", [])
    ]
    assert {p["name"] for p in parameters} == {"after", "limit", "record_id"}  # the corrections' list and retract
    assert all(p["schema"]["type"] == "integer" for p in parameters)  # numbers only: nothing names a file
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    assert '<script src="/static/app.js"' in page.text and "http" not in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/../app.py").status_code == 404 and client.get("/docs").status_code == 404


def test_serve_listens_on_localhost_unless_told(runs, monkeypatch, tmp_path):
    import uvicorn

    calls = []

    def run(server, sockets):  # the socket the server would listen on, bound before "serving"
        calls.append(sockets[0].getsockname())
        sockets[0].close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    plain = CliRunner().invoke(cli, ["serve", str(runs["joint"])])
    assert plain.exit_code == 0, plain.output
    assert not (runs["joint"] / "corrections.sqlite").exists()  # serving read-only writes nothing into the run
    refused = CliRunner().invoke(cli, ["serve", str(runs["joint"]), "--host", "0.0.0.0", "--port", "8123"])
    assert refused.exit_code == 1 and "needs users with tokens first" in refused.stderr and len(calls) == 1
    run = shutil.copytree(runs["joint"], tmp_path / "joint")
    assert CliRunner().invoke(cli, ["users", "add", "ada", "--role", "admin", "--store", str(run)]).exit_code == 0
    opened = CliRunner().invoke(cli, ["serve", str(run), "--host", "0.0.0.0", "--port", "8123"])
    assert opened.exit_code == 0, opened.output
    assert calls == [("127.0.0.1", 8000), ("0.0.0.0", 8123)]
    missing = CliRunner().invoke(cli, ["serve", str(runs["joint"] / "nowhere")])
    assert missing.exit_code == 1 and "no such run folder" in missing.stderr


# ---- property-based: every operation of the OpenAPI schema, valid and invalid input ---------------
@pytest.fixture(scope="module")
def api_schema(models, runs):
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(models["sparse"], runs["sparse"]))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
def test_no_input_gets_a_server_error(case):
    response = case.call()
    case.validate_response(response, checks=[not_a_server_error])
    assert response.status_code < 500, response.text
