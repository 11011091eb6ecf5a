"""The contract every registered model family keeps (as scikit-learn's estimator checks): config
stored as given, fit (a few steps), predict, explain, intervene or its one clear refusal, an
exact save/load round trip, and repeatable training. A family registered anywhere, the toy one
below included, is checked here without a line of its own."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from lucidlm import ConceptValues, SubnetworkRewiring, load_pretrained
from lucidlm.errors import Unsupported
from lucidlm.explain import Explanation
from lucidlm.explain.tokens import integrated_gradients
from lucidlm.models import FAMILIES, LucidModel, ModelConfig
from lucidlm.models.losses import task_loss
from lucidlm.outputs import ModelOutput

# Options that make a family train in seconds on the tiny backbone; a family not named trains as configured.
FAST_OPTIONS = {
    "bottleneck": {"mode": "joint", "concept_loss_weight": 0.5},
    "sparse": {
        "sparsity": 0.5,
        "pruning_start": 0.5,
        "pruning_end": 1.5,
        "pruning_interval": 2,
        "pruning_options": {"gradients": 2},
    },
}
FAST = dict(epochs=2, batch_size=16, progress=False)
TEXT = "Great pasta, but we waited an hour."
CORRECTIONS = [ConceptValues({"service": "Negative"}), SubnetworkRewiring("service", "Negative", fraction=0.3)]


# ---- a toy family, defined and registered here: the library serves it unchanged ----------------


class CentroidLM(LucidModel):
    """Logits = −‖h − centroid_c‖ to one learned centroid per class; explained by integrated
    gradients of the predicted class. Takes no corrections."""

    family = "toy-centroid"
    config_class = ModelConfig

    def __init__(self, config, spec, backbone, tokenizer):
        super().__init__(config, spec, backbone, tokenizer)
        self.centroids = nn.Parameter(torch.randn(spec.num_labels, self.hidden_size) * 0.1)

    def forward(self, input_ids, attention_mask):
        pooled = self.pooled(input_ids, attention_mask)
        return ModelOutput(-torch.cdist(pooled, self.centroids), (), pooled)

    def training_loss(self, forward, batch):
        return task_loss(self.spec, forward(batch["input_ids"], batch["attention_mask"]).label_logits, batch["labels"])

    def explain(self, text, *, pair=None, steps=8):
        prediction = self.predict(text, pair)[0]
        batch = self.encoder.batch([text], [pair] if pair else None)
        c = self.spec.label_index(prediction.label)
        tokens = integrated_gradients(
            self,
            batch["input_ids"],
            batch["attention_mask"],
            lambda i, m: self(i, m).label_logits.softmax(-1)[:, c],
            "label",
            steps,
        )
        return Explanation(text=text, text_pair=pair, prediction=prediction, tokens=[tokens])


def build(family, backbone_dir, spec, seed=0):
    return FAMILIES.get(family).from_backbone(str(backbone_dir), task=spec, seed=seed, **FAST_OPTIONS.get(family, {}))


@pytest.fixture(scope="module", params=FAMILIES.names)
def fitted(request, tiny_bert_dir, cebab_small):
    model = build(request.param, tiny_bert_dir, cebab_small.spec)
    assert model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST) is model
    return request.param, model


def test_every_family_is_registered_and_the_toy_one_too():
    assert {"standard", "bottleneck", "sparse", "prototype", "toy-centroid"} <= set(FAMILIES.names)


def test_config_is_stored_as_given(fitted):
    family, model = fitted
    assert model.family == family and model.summary()["family"] == family
    for key, value in FAST_OPTIONS.get(family, {}).items():
        assert getattr(model.config, key) == value


def test_predictions_metrics_and_explanations(fitted, cebab_small):
    _, model = fitted
    prediction = model.predict(TEXT)[0]
    assert prediction.label in cebab_small.spec.classes
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    metrics = model.evaluate(cebab_small.test)
    assert metrics["n"] == len(cebab_small.test) and 0 <= metrics["task"]["accuracy"] <= 1
    explanation = model.explain(TEXT)
    assert isinstance(explanation, Explanation) and explanation.prediction.label == prediction.label
    assert json.loads(explanation.to_json())["text"] == TEXT
    for tokens in explanation.tokens:  # how to show them, computed once for every view
        assert len(tokens.special) == len(tokens.words) == len(tokens.space_before) == len(tokens.tokens)
        assert tokens.special[0] and tokens.special[-1]  # [CLS] … [SEP]


def test_a_long_text_gets_the_same_answer_from_predict_and_evaluate(fitted, cebab_small):
    """predict (so explain and the page) reads what training and evaluate read, the first
    ``max_length`` tokens, and says it read only part of the text."""
    _, model = fitted
    long = " ".join(cebab_small.test.texts[:12])  # several reviews: far past 128 tokens
    prediction = model.predict([long, TEXT])
    assert prediction[0].truncated and prediction[0].tokens_read == model.config.max_length == 128
    assert prediction[0].tokens_total == len(model.tokenizer(long)["input_ids"]) > 128
    assert not prediction[1].truncated and prediction[1].tokens_read == prediction[1].tokens_total
    rows = cebab_small.test.select([0, 1])
    rows.texts = [long, TEXT]
    logits = torch.as_tensor(model.infer(rows)["label_logits"])
    for p, row in zip(prediction, logits.softmax(-1)):
        assert list(p.probabilities.values()) == pytest.approx(row.tolist(), abs=1e-5)
    assert model.explain(long).prediction.truncated


@pytest.mark.parametrize("correction", CORRECTIONS, ids=lambda c: type(c).__name__)
def test_intervene_or_one_clear_refusal(fitted, correction):
    family, model = fitted
    if isinstance(correction, model.corrections):
        before = model.predict(TEXT)[0]
        result = model.intervene(TEXT, correction)[0]
        assert result.before == before and result.interventions == {"service": "Negative"}
        if isinstance(correction, ConceptValues):  # set as given
            assert result.after.concepts["service"].value == "Negative"
        else:  # rewired toward it, for this text only
            assert result.weights_changed > 0 and not result.committed and model.predict(TEXT)[0] == before
    else:
        with pytest.raises(Unsupported, match=f"a {family} model cannot take a {type(correction).__name__} correction"):
            model.intervene(TEXT, correction)


def test_save_load_round_trip(fitted, tmp_path):
    _, model = fitted
    model.save_pretrained(tmp_path / "run")
    loaded = load_pretrained(tmp_path / "run")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.predict([TEXT, "Rude."]) == model.predict([TEXT, "Rude."])
    assert loaded.explain(TEXT).to_dict() == model.explain(TEXT).to_dict()


def test_same_seed_same_model(fitted, tiny_bert_dir, cebab_small):
    family, model = fitted
    again = build(family, tiny_bert_dir, cebab_small.spec)
    again.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    assert again.evaluate(cebab_small.test) == model.evaluate(cebab_small.test)


def test_the_toy_family_is_served_by_the_cli_the_suite_and_the_web_api(fitted, tmp_path, cebab_small):
    """No library file names the toy family, yet every consumer serves it through the contract."""
    family, model = fitted
    if family != "toy-centroid":
        pytest.skip("the toy family's own test")
    from fastapi.testclient import TestClient

    from lucidlm.cli import app
    from lucidlm.evaluation import run_suite
    from lucidlm.web.app import create_app

    model.save_pretrained(tmp_path / "toy")
    predicted = CliRunner().invoke(app, ["predict", str(tmp_path / "toy"), TEXT, "--json"])
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)[0]["label"] == model.predict(TEXT)[0].label
    explained = CliRunner().invoke(app, ["explain", str(tmp_path / "toy"), TEXT, "--json"])
    assert explained.exit_code == 0 and json.loads(explained.stdout)["tokens"][0]["target"] == "label"
    refused = CliRunner().invoke(app, ["intervene", str(tmp_path / "toy"), TEXT, "--set", "service=Negative"])
    assert refused.exit_code == 1 and "a toy-centroid model cannot take a ConceptValues correction" in refused.stderr

    results = run_suite(model, cebab_small, "faithfulness,interventions", samples=4)
    assert results["task"] == model.evaluate(cebab_small.test)["task"]
    assert results["faithfulness"]["tokens"]["n"] == 4
    assert results["interventions"] == {"skipped": "a toy-centroid model has no concepts"}

    client = TestClient(create_app(model, tmp_path / "toy"))
    info = client.get("/api/info").json()
    assert info["family"] == "toy-centroid" and not info["can_intervene"] and info["concepts"] == []
    assert client.post("/api/predict", json={"text": TEXT}).json()["label"] == model.predict(TEXT)[0].label
    assert client.post("/api/explain", json={"text": TEXT}).status_code == 200
    answer = client.post("/api/intervene", json={"text": TEXT, "values": {"service": "Negative"}})
    assert answer.status_code == 400 and "cannot take a ConceptValues correction" in answer.json()["detail"]
