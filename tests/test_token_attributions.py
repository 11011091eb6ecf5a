"""The token-attribution contract, checked for every method in ``TOKEN_ATTRIBUTIONS``; and a toy
method defined in this file, with no change to the library, scored by the evaluation suite beside
the model's own explanation."""

from __future__ import annotations

import pytest

from lucidlm.evaluation import run_suite
from lucidlm.evaluation.faithfulness import target_scorer
from lucidlm.explain.tokens import TOKEN_ATTRIBUTIONS, AttributionMethod, token_attribution
from lucidlm.models import load_pretrained


class FirstWordsFirst(AttributionMethod):
    """The earlier a token, the higher its score: what a reader who stops early would say."""

    def attribute(self, model, input_ids, attention_mask, score, target, text=None, pair=None):
        ids = input_ids[0].tolist()
        return token_attribution(
            model.tokenizer, ids, [float(-i) for i in range(len(ids))], target, "toy-first-words", text, pair
        )


@pytest.fixture(autouse=True, scope="module")
def _toy_registered():
    """The toy method is registered while this file's tests run, and only then."""
    with TOKEN_ATTRIBUTIONS.registered("toy-first-words", FirstWordsFirst):
        yield


TEXT = "Great pasta, but we waited an hour for a rude waiter."


@pytest.fixture(scope="module")
def joint(tiny_runs):
    return load_pretrained(tiny_runs["joint"])


@pytest.mark.parametrize("name", [*TOKEN_ATTRIBUTIONS.names, "toy-first-words"])  # the library's, and the toy
def test_every_attribution_method_keeps_the_contract(name, joint):
    batch = joint.encoder.batch([TEXT])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    prediction = joint.predict([TEXT])[0]
    for target in ("label", "service"):
        score = target_scorer(joint, target, prediction)
        method = TOKEN_ATTRIBUTIONS.get(name)()
        first, again = (method.attribute(joint, ids, mask, score, target, text=TEXT) for _ in range(2))
        assert first.target == target and first.method.split("(")[0] == name  # the suite keys on the name
        assert len(first.scores) == ids.shape[1] and first.scores == again.scores  # one score a token, repeatable
        assert all(isinstance(x, float) and x == x for x in first.scores)
        assert "".join(g.before + g.text for g in first.groups).strip() == TEXT  # shown in the writer's characters


def test_the_suite_scores_a_registered_method_beside_the_models_own(joint, cebab_small):
    tokens = run_suite(joint, cebab_small, "faithfulness", samples=4)["faithfulness"]["tokens"]
    label = tokens["targets"]["label"]
    assert tokens["own_explainer"] == "integrated_gradients"
    assert set(label) == {"integrated_gradients", "gradient_x_input", "toy-first-words", "random"}
    assert label["toy-first-words"]["n"] == label["integrated_gradients"]["n"] == tokens["n"]
    assert isinstance(label["toy-first-words"]["comprehensiveness"]["aopc"], float)


def test_a_registry_refuses_what_is_not_an_attribution_method():
    with pytest.raises(TypeError, match="expected an AttributionMethod"):
        TOKEN_ATTRIBUTIONS.register("plain-function")(lambda *a: None)
