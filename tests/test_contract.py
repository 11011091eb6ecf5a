"""The contract every model family keeps (as scikit-learn's estimator checks): configuration
stored as given, typed predictions, metrics, explanations, an exact save/load round trip, and
repeatable training."""

import pytest

from lucidlm import load_pretrained
from lucidlm.explain import Explanation
from lucidlm.models import LucidModel

FAMILIES = {
    "bottleneck": {"mode": "joint", "concept_loss_weight": 0.5},
    "sparse": {"sparsity": 0.5, "pruning_start": 0.5, "pruning_end": 1.5, "pruning_interval": 2, "obert_gradients": 2},
    "prototype": {},
}
FAST = dict(epochs=2, batch_size=16, progress=False)
TEXT = "Great pasta, but we waited an hour."


def build(family, backbone_dir, spec, seed=0):
    cls = LucidModel.registry[family]
    return cls.from_backbone(str(backbone_dir), task=spec, seed=seed, **FAMILIES[family])


@pytest.fixture(scope="module", params=sorted(set(FAMILIES) & set(LucidModel.registry)))
def fitted(request, tiny_bert_dir, cebab_small):
    model = build(request.param, tiny_bert_dir, cebab_small.spec)
    assert model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST) is model
    return request.param, model


def test_config_is_stored_as_given(fitted):
    family, model = fitted
    assert model.family == family
    for key, value in FAMILIES[family].items():
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
    assert explanation.to_json()


def test_save_load_round_trip(fitted, tmp_path):
    _, model = fitted
    model.save_pretrained(tmp_path / "run")
    loaded = load_pretrained(tmp_path / "run")
    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.predict([TEXT, "Rude."]) == model.predict([TEXT, "Rude."])


def test_same_seed_same_model(fitted, tiny_bert_dir, cebab_small):
    family, model = fitted
    again = build(family, tiny_bert_dir, cebab_small.spec)
    again.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    assert again.evaluate(cebab_small.test) == model.evaluate(cebab_small.test)
