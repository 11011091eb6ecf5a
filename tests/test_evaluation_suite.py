"""The evaluation suite: each metric's arithmetic on cases computed by hand, the model glue on tiny
random models, and ``lucidlm evaluate --suite`` end to end."""

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from lucidlm import ConceptBottleneckLM, PrototypeLM, SparseConceptLM, StandardLM
from lucidlm.cli import app
from lucidlm.data import MISSING
from lucidlm.errors import LucidError
from lucidlm.evaluation import parse_suites, render_markdown, run_suite
from lucidlm.evaluation.causal import (
    average_effect_estimator,
    cebab_pairs,
    cosine_distance,
    effect_distances,
    estimate_effects,
    summarize,
)
from lucidlm.evaluation.curves import expected_random_curve, intervention_curve
from lucidlm.evaluation.faithfulness import (
    concept_faithfulness,
    concept_removal_drops,
    curve_summary,
    order_by,
    removal_inputs,
    token_faithfulness_of,
    tokens_to_remove,
)
from lucidlm.evaluation.outputs import TextOutputs
from lucidlm.intervene import uncertainty_order

CLS, SEP = 101, 102


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models run faster on one thread: their 32-wide matrices gain nothing from a
    second one, and lose much when another process holds the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- token faithfulness: the arithmetic -------------------------------------------------------


def test_top_k_percent_counts_and_deletion_keep_special_tokens():
    assert [tokens_to_remove(10, f) for f in (0.01, 0.05, 0.10, 0.20, 0.50)] == [1, 1, 1, 2, 5]
    assert [tokens_to_remove(3, f) for f in (0.01, 0.50)] == [1, 2]  # ⌈1.5⌉ = 2 of 3
    assert tokens_to_remove(2, 0.50) == 1  # never every token
    ids, special = [CLS, 7, 8, 9, SEP], [True, False, False, False, True]
    scores = [5.0, 0.1, 0.9, 0.5, 5.0]  # the special tokens' scores are never used
    without, only = removal_inputs(ids, special, scores, fractions=(0.2, 0.5))
    assert without == [[CLS, 7, 9, SEP], [CLS, 7, SEP]]
    assert only == [[CLS, 8, SEP], [CLS, 8, 9, SEP]]
    # ties: the earlier position first
    assert removal_inputs(ids, special, [0, 1, 1, 1, 0], fractions=(0.2,))[0] == [[CLS, 8, 9, SEP]]


def test_comprehensiveness_and_sufficiency_on_a_toy_scorer():
    """p(sequence) = 0.1 + 0.2 × (how many of the tokens 8 and 9 it holds): p(x) = 0.5.

    Explanation A ranks 8, 9, 7: k=20% removes {8}: comp 0.5−0.3 = 0.2, suff 0.5−0.3 = 0.2;
    k=50% removes {8, 9}: comp 0.5−0.1 = 0.4, suff 0.5−0.5 = 0. AOPC: comp 0.3, suff 0.1.
    Explanation B ranks 7, 8, 9: k=20%: comp 0.5−0.5 = 0, suff 0.5−0.1 = 0.4; k=50%: comp
    0.5−0.3 = 0.2, suff 0.5−0.3 = 0.2. AOPC: comp 0.1, suff 0.3."""
    ids, special = [CLS, 7, 8, 9, SEP], [True, False, False, False, True]
    calls = []

    def probability(sequences):
        calls.append(len(sequences))
        return np.array([0.1 + 0.2 * sum(t in (8, 9) for t in s) for s in sequences])

    found = token_faithfulness_of(
        ids, special, {"A": [0, 0.2, 0.9, 0.5, 0], "B": [0, 0.9, 0.5, 0.2, 0]}, probability, fractions=(0.2, 0.5)
    )
    assert calls == [1 + 2 * 2 * 2]  # one call: the input and every perturbation
    np.testing.assert_allclose(found["A"]["comprehensiveness"], [0.2, 0.4])
    np.testing.assert_allclose(found["A"]["sufficiency"], [0.2, 0.0], atol=1e-12)
    np.testing.assert_allclose(found["B"]["comprehensiveness"], [0.0, 0.2], atol=1e-12)
    np.testing.assert_allclose(found["B"]["sufficiency"], [0.4, 0.2])
    summary = curve_summary({k: np.array([v]) for k, v in found["A"].items()})
    assert summary["comprehensiveness"]["aopc"] == pytest.approx(0.3)
    assert summary["sufficiency"]["aopc"] == pytest.approx(0.1)


def test_unknown_tokens_are_the_texts_own_and_are_ranked_and_removed(joint_model):
    """A text the WordPiece vocabulary reads as [UNK] [UNK] (two emoji) has two tokens of its own
    to rank: it is measured, not left out as if it held nothing but [CLS] and [SEP]."""
    from lucidlm.data import Split
    from lucidlm.evaluation.faithfulness import token_faithfulness

    texts = ["😀 🍕", "Great pasta, rude waiter."]
    split = Split(texts=texts, labels=np.array([4, 2]), concepts=np.full((2, 4), MISSING), source="two rows")
    assert joint_model.tokenizer.convert_ids_to_tokens(joint_model.encoder.batch(texts[:1])["input_ids"][0]) == [
        "[CLS]",
        "[UNK]",
        "[UNK]",
        "[SEP]",
    ]
    found = token_faithfulness(joint_model, split, samples=2)
    assert found["left_out"] == 0 and found["n"] == 2


# ---- concept faithfulness ---------------------------------------------------------------------


def test_concept_removal_drops_by_hand():
    """p = base − Σ of the removed concepts' weights; the weights are also the contributions."""
    weights = np.array([[0.3, 0.1, 0.05], [0.0, 0.2, 0.1]])
    base = np.array([0.9, 0.6])
    order = order_by(weights)
    assert order.tolist() == [[0, 1, 2], [1, 2, 0]]
    drops = concept_removal_drops(base, lambda removed: base - (weights * removed).sum(1), order)
    # m=1: remove {0} / {1}; keep only them: remove {1,2} / {2,0}. m=2: remove {0,1} / {1,2}; keep: remove {2} / {0}
    np.testing.assert_allclose(drops["comprehensiveness"], [[0.3, 0.4], [0.2, 0.3]])
    np.testing.assert_allclose(drops["sufficiency"], [[0.15, 0.05], [0.1, 0.0]])


FAST = dict(epochs=1, batch_size=16, progress=False)


@pytest.fixture(scope="module")
def joint_model(tiny_bert_dir, cebab_small):
    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, mode="joint")
    return model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)


def test_contributions_sum_to_the_label_logit(joint_model, cebab_small):
    outputs = TextOutputs(joint_model).get(cebab_small.test.texts)
    logits = [torch.from_numpy(x) for x in outputs["concept_logits"]]
    label = torch.from_numpy(outputs["label_logits"].argmax(-1))
    with torch.no_grad():
        contributions = joint_model.concept_contribution_matrix(joint_model.concept_activations(logits), label)
    expected = (
        outputs["label_logits"][np.arange(len(label)), label.numpy()]
        - joint_model.calibrated(joint_model.label_head.bias)[label].detach().numpy()
    )
    np.testing.assert_allclose(contributions.sum(1).numpy(), expected, rtol=1e-4, atol=1e-5)


def test_concept_faithfulness_of_a_head_that_reads_one_concept(tiny_bert_dir, cebab_small):
    """A label head that reads only food's Positive logit f, toward class 5, which a bias of 10
    always predicts: p = e^(10+f) / (4 + e^(10+f)). Food contributes f, the others 0, so food
    ranks first where f > 0 and last where f < 0 (the zeros tie: index order). Removing food to
    its mean f̄ moves p; removing any other concept moves nothing. So, for m = 1, 2, 3: where
    f > 0, comprehensiveness = p(f) − p(f̄) and sufficiency = 0; where f < 0, the other way round.
    To ``unknown``: f becomes the uncalibrated unknown row's −5, unless food is predicted unknown."""
    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, mode="joint")
    with torch.no_grad():
        model.label_head.weight.zero_()
        model.label_head.bias.zero_()
        model.label_head.weight[4, 1] = 1.0  # class "5" <- food: Positive
        model.label_head.bias[4] = 10.0
    split = cebab_small.test.select(range(6))
    outputs = TextOutputs(model)
    food = outputs.get(split.texts)["concept_logits"][0]
    f = food[:, 1]
    assert (f > 0).any() and (f < 0).any()  # both cases occur in these rows
    result = concept_faithfulness(model, outputs, split, seed=0, repeats=2)
    assert result["steps"] == [1, 2, 3]

    def p(x):
        return np.exp(10 + x) / (4 + np.exp(10 + x))

    replaced = {"mean": np.full_like(f, f.mean()), "unknown": np.where(food.argmax(1) == 2, f, -5.0)}
    for how, value in replaced.items():
        drop = p(f) - p(value)
        top = result["modes"][how]["most_contributing"]
        assert top["comprehensiveness"]["per_step"] == pytest.approx([np.where(f > 0, drop, 0).mean()] * 3, abs=1e-5)
        assert top["sufficiency"]["per_step"] == pytest.approx([np.where(f < 0, drop, 0).mean()] * 3, abs=1e-5)
        assert top["comprehensiveness"]["aopc"] == pytest.approx(np.where(f > 0, drop, 0).mean(), abs=1e-5)


# ---- causal effects -------------------------------------------------------------------------


def test_icace_scores_by_hand():
    icace = np.array([[0.6, -0.8, 0, 0, 0], [1.0, 0, 0, 0, 0], [0.3, 0.4, 0, 0, 0]])
    eicace = np.array([[0.3, -0.4, 0, 0, 0], [0, 1.0, 0, 0, 0], [0, 0, 0, 0, 0]])
    d = effect_distances(icace, eicace)
    np.testing.assert_allclose(d["l2"], [0.5, math.sqrt(2), 0.5])
    np.testing.assert_allclose(d["cosine"], [0.0, 1.0, 1.0], atol=1e-12)  # a zero estimate: distance 1 (CEBaB)
    np.testing.assert_allclose(d["norm_diff"], [0.5, 0.0, 0.5])
    assert cosine_distance(np.array([1.0, 0]), np.array([-2.0, 0])) == pytest.approx(2.0)
    pairs = [
        _pair("food", "Negative", "Positive"),
        _pair("food", "Negative", "Positive"),
        _pair("noise", "Positive", "Negative"),
    ]
    summary = summarize(pairs, d)
    assert summary["overall"] == pytest.approx(
        {"n": 3, "l2": (1 + math.sqrt(2)) / 3, "cosine": 2 / 3, "norm_diff": 1 / 3}
    )
    assert summary["per_aspect"]["food"] == pytest.approx(
        {"n": 2, "l2": (0.5 + math.sqrt(2)) / 2, "cosine": 0.5, "norm_diff": 0.25}
    )
    assert summary["per_direction"]["noise: Positive→Negative"]["n"] == 1


def _pair(aspect, before, after, effect=None):
    from lucidlm.evaluation.causal import CounterfactualPair

    return CounterfactualPair("o", "e", "orig", "edit", aspect, before, after, effect)


def _row(rid, original_id, is_original, edit_type, food, service, votes, majority):
    return {
        "id": rid,
        "original_id": original_id,
        "is_original": is_original,
        "edit_type": edit_type,
        "description": f"text {rid}",
        "review_majority": majority,
        "review_label_distribution": votes,
        "food_aspect_majority": food,
        "ambiance_aspect_majority": "",
        "service_aspect_majority": service,
        "noise_aspect_majority": "",
    }


def test_cebab_pairs_and_the_average_effect_baseline_by_hand():
    rows = [
        _row("1_0", "1", True, None, "Negative", "", {"2": 4, "3": 1}, "2"),
        _row("1_1", "1", False, "food", "Positive", "", {"4": 5}, "4"),  # food Negative→Positive
        _row(
            "1_2", "1", False, "service", "Negative", "no majority", {"2": 5}, "2"
        ),  # service unknown→unknown: dropped
        _row("2_0", "2", True, None, "Negative", "Positive", "", "3"),  # no votes: one-hot of the majority
        _row("2_1", "2", False, "food", "Positive", "Positive", {"4": 2, "5": 2}, "no majority"),  # kept: it has votes
        _row("2_2", "2", False, "service", "Negative", "Negative", {"1": 5}, "1"),  # service Positive→Negative
        _row("3_1", "3", False, "food", "Positive", "", {"5": 5}, "5"),  # its original is absent: no pair
    ]
    pairs = cebab_pairs(rows, with_label_effect=True)
    assert [(p.edit_id, p.direction) for p in pairs] == [
        ("1_1", ("food", "Negative", "Positive")),
        ("2_1", ("food", "Negative", "Positive")),
        ("2_2", ("service", "Positive", "Negative")),
    ]
    np.testing.assert_allclose(pairs[0].label_effect, [0, -0.8, -0.2, 1.0, 0])
    np.testing.assert_allclose(pairs[1].label_effect, [0, 0, -1.0, 0.5, 0.5])
    estimator = average_effect_estimator(pairs)
    np.testing.assert_allclose(estimator[("food", "Negative", "Positive")], [0, -0.4, -0.6, 0.75, 0.25])
    estimates, unseen = estimate_effects(
        estimator, [_pair("food", "Negative", "Positive"), _pair("noise", "Negative", "Positive")], 5
    )
    np.testing.assert_allclose(estimates, [[0, -0.4, -0.6, 0.75, 0.25], [0, 0, 0, 0, 0]])
    assert unseen == 1


def test_the_full_pair_protocol_takes_every_one_aspect_difference_in_both_directions():
    rows = [
        _row("1_0", "1", True, None, "Negative", "Positive", {"2": 5}, "2"),
        _row("1_1", "1", False, "food", "Positive", "Positive", {"4": 5}, "4"),  # differs from 1_0 in food
        _row("1_2", "1", False, "service", "Negative", "Negative", {"1": 5}, "1"),  # differs from 1_0 in service
    ]  # 1_1 and 1_2 differ in two aspects: no pair
    pairs = cebab_pairs(rows, protocol="all")
    assert sorted((p.original_id, p.edit_id, p.direction) for p in pairs) == [
        ("1_0", "1_1", ("food", "Negative", "Positive")),
        ("1_0", "1_2", ("service", "Positive", "Negative")),
        ("1_1", "1_0", ("food", "Positive", "Negative")),
        ("1_2", "1_0", ("service", "Negative", "Positive")),
    ]
    assert {p.source_concepts for p in pairs if p.original_id == "1_1"} == {
        ("Positive", "unknown", "Positive", "unknown")
    }
    assert len(cebab_pairs(rows)) == 2  # original→edit only
    with pytest.raises(LucidError, match="pair protocol: expected one of"):
        cebab_pairs(rows, protocol="both")


def test_the_s_learner_and_matching_baselines_read_the_same_models_outputs_by_hand():
    """A 'model' whose output is a fixed distribution per text: the matching baseline averages the
    outputs of the training texts with the target values; the S-learner learns the model's class
    from the values, so with food alone deciding it, setting food flips its prediction."""
    from lucidlm.evaluation.causal import CounterfactualPair, matching_effects, s_learner_effects

    class Outputs:
        def __init__(self, table):
            self.table = table

        def get(self, texts, pairs=None):
            return {"label_logits": np.log(np.array([self.table[t] for t in texts]))}

    good, bad = [0.05, 0.05, 0.1, 0.3, 0.5], [0.5, 0.3, 0.1, 0.05, 0.05]
    train_values = [("Positive", "unknown", "unknown", "unknown")] * 6 + [
        ("Negative", "unknown", "unknown", "unknown")
    ] * 6
    train_texts = [f"t{i}" for i in range(12)]
    table = {t: (good if i < 6 else bad) for i, t in enumerate(train_texts)} | {"source": bad}
    pair = CounterfactualPair(
        "s", "e", "source", "edit", "food", "Negative", "Positive", None, ("Negative", "unknown", "unknown", "unknown")
    )
    outputs = Outputs(table)
    matched, unmatched = matching_effects(train_texts, train_values, outputs, [pair])
    np.testing.assert_allclose(matched[0], np.array(good) - np.array(bad), atol=1e-9)
    assert unmatched == 0
    unseen = CounterfactualPair("s", "e", "source", "edit", "noise", "unknown", "Negative", None, pair.source_concepts)
    assert matching_effects(train_texts, train_values, outputs, [unseen])[1] == 1
    effect = s_learner_effects(train_texts, train_values, outputs, [pair])[0]
    assert effect[4] > 0.3 and effect[0] < -0.3 and abs(effect.sum()) < 1e-9  # toward class 5, away from class 1


# ---- intervention curves --------------------------------------------------------------------


def test_intervention_curve_by_hand():
    """Label = the sum of two binary concepts. Predicted concepts [0,0], [1,0], [0,1]; gold [1,1],
    [1,0], [1,1]; true labels 2, 1, 2. m=0: sums 0, 1, 1: 1/3 right. m=1 (first concept of each
    order): row 0 sets c0 → 1 (wrong), row 1 c0 → 1 (right), row 2 c0 → 2 (right): 2/3. m=2: all."""
    predicted = np.array([[0, 0], [1, 0], [0, 1]])
    gold, labels = np.array([[1, 1], [1, 0], [1, 1]]), np.array([2, 1, 2])

    def label_logits(values):
        concepts = np.where(values == MISSING, predicted, values)
        return np.eye(3)[concepts.sum(1)]

    order = np.array([[0, 1], [0, 1], [0, 1]])
    assert intervention_curve(label_logits, order, gold, labels) == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert intervention_curve(label_logits, order[:, ::-1], gold, labels) == pytest.approx([1 / 3, 1 / 3, 1.0])
    # entropy: concept 1 of row 0 is the most uncertain; row 1's concepts tie (lower index first)
    probs = [np.array([[0.9, 0.1], [0.5, 0.5], [0.99, 0.01]]), np.array([[0.5, 0.5], [0.5, 0.5], [0.6, 0.4]])]
    assert uncertainty_order(probs).tolist() == [[1, 0], [0, 1], [1, 0]]


def test_the_exact_random_curve_is_the_mean_over_every_order():
    """The random order's curve without sampling: the same as averaging the curve over all K!
    orders (here 3 concepts of unequal weight in the label), and the by-hand figures of the
    two-concept case above (m=1: c0 first, 2/3, or c1 first, 1/3)."""
    rng = np.random.default_rng(0)
    predicted, gold = rng.integers(0, 2, (40, 3)), rng.integers(0, 2, (40, 3))
    weights = np.array([2, 1, 1])
    labels = (gold @ weights >= 2).astype(int)

    def label_logits(values):
        concepts = np.where(values == MISSING, predicted, values)
        return np.eye(2)[(concepts @ weights >= 2).astype(int)]

    every_order = [
        intervention_curve(label_logits, np.tile(order, (40, 1)), gold, labels)
        for order in itertools.permutations(range(3))
    ]
    exact = expected_random_curve(lambda chosen: label_logits(np.where(chosen, gold, MISSING)), 3, labels)
    assert exact == pytest.approx(np.mean(every_order, axis=0).tolist())
    assert exact[0] < exact[-1] == 1.0

    two_predicted = np.array([[0, 0], [1, 0], [0, 1]])
    two_gold, two_labels = np.array([[1, 1], [1, 0], [1, 1]]), np.array([2, 1, 2])
    by_sum = lambda v: np.eye(3)[np.where(v == MISSING, two_predicted, v).sum(1)]  # noqa: E731
    assert expected_random_curve(
        lambda chosen: by_sum(np.where(chosen, two_gold, MISSING)), 2, two_labels
    ) == pytest.approx([1 / 3, 1 / 2, 1.0])


def test_expected_change_asks_first_about_the_one_concept_the_label_reads(tiny_bert_dir, cebab_small):
    """A label head that reads only service: setting any other concept changes nothing (TV 0), so
    service ranks first in every row; the others tie and keep their index order."""
    from lucidlm.intervene import INTERVENTION_POLICIES

    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, mode="joint").eval()
    with torch.no_grad():
        model.label_head.weight.zero_()
        model.label_head.weight[:, 6:9] = torch.tensor([[1.0, -1, 0]] * 2 + [[0, 0, 0]] + [[-1.0, 1, 0]] * 2)
    states = [torch.from_numpy(x) for x in TextOutputs(model).get(cebab_small.test.texts)["concept_states"]]
    order = INTERVENTION_POLICIES.get("expected_change")(model, states)
    assert order.tolist() == [[2, 0, 1, 3]] * len(cebab_small.test)
    assert INTERVENTION_POLICIES.names == ["random", "uncertainty", "expected_change", "label_change", "learned"]


def test_the_first_question_is_the_concept_most_likely_to_change_the_label_or_the_pair_that_would(
    joint_model, cebab_small
):
    """label_change's score of concept k, by hand through ``intervene``: Σ_{v ≠ read} p_kv·[the
    label changes]; the suggestion asks first about its top concept; where no single correction
    changes the label, its pair does (to the label it names) and no more probable pair does; with
    no pair, none does."""
    import itertools

    from lucidlm.intervene import INTERVENTION_POLICIES, label_change_scores, suggest_corrections

    model, texts = joint_model, cebab_small.test.texts[:12]
    with torch.no_grad():
        states = model.forward_texts(texts).concept_states
    scores = label_change_scores(model, states)
    order = INTERVENTION_POLICIES.get("label_change")(model, states)
    suggestions = suggest_corrections(model, states)
    kinds = set()
    for i, text in enumerate(texts):
        before = model.predict(text)[0]
        flips = {}
        for k, concept in enumerate(model.spec.concepts):
            read = before.concepts[concept.name]
            changes = {
                v: model.intervene(text, {concept.name: v})[0].after.label != before.label
                for v in concept.values
                if v != read.value
            }
            flips[concept.name] = changes
            assert scores[i, k] == pytest.approx(sum(read.probabilities[v] for v, c in changes.items() if c), abs=1e-5)
        assert list(scores[i, order[i]]) == sorted(scores[i], reverse=True)
        s = suggestions[i]
        assert s.concept == model.spec.concepts[order[i, 0]].name and s.change_probability == pytest.approx(
            scores[i].max()
        )
        if s.single_correction_changes_label:
            kinds.add("single")
            assert any(flips[s.concept].values()) and s.pair is None
            continue
        assert not any(any(c.values()) for c in flips.values())
        pairs = [
            {a.name: u, b.name: w}
            for a, b in itertools.combinations(model.spec.concepts, 2)
            for u in a.values
            for w in b.values
            if u != before.concepts[a.name].value and w != before.concepts[b.name].value
        ]
        changing = [pair for pair in pairs if model.intervene(text, pair)[0].after.label != before.label]
        if s.pair is None:
            kinds.add("none")
            assert changing == []
            continue
        kinds.add("pair")
        result = model.intervene(text, s.pair)[0]
        assert result.after.label == s.pair_label != before.label
        weight = lambda pair: np.prod([before.concepts[c].probabilities[v] for c, v in pair.items()])  # noqa: B023, E731
        assert weight(s.pair) == pytest.approx(max(weight(pair) for pair in changing))
    assert kinds  # every row was checked by one branch or another


@pytest.mark.parametrize("weight, pair", [(0.15, {"food": "Positive", "service": "Positive"}), (0.05, None)])
def test_when_no_single_correction_changes_the_label_the_suggestion_names_the_pair_that_does(
    weight, pair, tiny_bert_dir, cebab_small
):
    """Concepts read with no preference (logits 0, p = 1/3: read as Negative) and a label head
    that gives class 1 weight·5 for food and for service set to Positive against class 0's bias 1:
    one correction adds 0.75 (no change), two add 1.5 (a change); with weight 0.05 not even two do."""
    from lucidlm.intervene import suggest_corrections

    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, mode="joint").eval()
    with torch.no_grad():
        for head in model.concept_layer.heads:
            head.weight.zero_()
            head.bias.zero_()
        model.label_head.weight.zero_()
        model.label_head.bias.copy_(torch.tensor([1.0, 0, 0, 0, 0]))
        model.label_head.weight[1, [1, 7]] = weight  # food = Positive, service = Positive
        states = model.forward_texts(cebab_small.test.texts[:3]).concept_states
    for s in suggest_corrections(model, states):
        assert s.change_probability == 0 and not s.single_correction_changes_label
        assert s.pair == pair and s.pair_label == (model.spec.classes[1] if pair else None)


def test_expected_change_counts_nothing_for_the_value_a_concept_already_has(tiny_bert_dir, cebab_small):
    """For concepts read as logits, setting a concept to the value the model predicts is no
    correction (the curves and ``intervene`` leave it as it is), so that value adds nothing. A
    label head that reads service strongly and ambiance weakly, with service read with certainty: service scores
    about 0 and ambiance is asked first; counting service's forced value (the scalar layer's
    forced logits, here a milder reading of the same value) would have put service first."""
    from lucidlm.intervene import INTERVENTION_POLICIES, expected_change_scores

    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, mode="joint").eval()
    with torch.no_grad():
        model.label_head.weight.zero_()
        model.label_head.weight[:, 6:9] = 0.2 * torch.tensor([[1.0, -1, 0]] * 2 + [[0, 0, 0]] + [[-1.0, 1, 0]] * 2)
        model.label_head.weight[:, 3:6] = 0.05 * torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
        service = model.concept_layer.heads[2]
        service.weight.zero_()
        service.bias.copy_(torch.tensor([12.0, 0.0, 0.0]))  # p(service = its value 0) = 1 - 1.2e-5
        model.concept_layer.intervention_table[2, 0, :3] = torch.tensor([2.0, 0.0, 0.0])
    states = [torch.from_numpy(x) for x in TextOutputs(model).get(cebab_small.test.texts)["concept_states"]]
    scores = expected_change_scores(model, states)
    assert scores[:, 2].max() < 1e-4
    missing = torch.full((len(states[0]), 4), MISSING)
    base = model.intervened_label_logits(states, missing).softmax(-1)
    forced = model.intervened_label_logits(
        states, missing.index_fill(1, torch.tensor([2]), 0), correct_only=False
    ).softmax(-1)
    counted = 0.5 * (forced - base).abs().sum(-1)  # what the predicted value would have added
    assert (scores[:, 1] > 1e-4).all() and (scores[:, 1] < counted).all()
    assert (INTERVENTION_POLICIES.get("expected_change")(model, states)[:, 0] == 1).all()


def test_curves_start_at_task_accuracy_and_end_at_gold_concepts(joint_model, cebab_small):
    results = run_suite(joint_model, cebab_small, "interventions", seed=0)
    curves = results["interventions"]
    metrics = joint_model.evaluate(cebab_small.test)
    assert curves["k"] == [0, 1, 2, 3, 4]
    for order in ("random", "uncertainty", "expected_change"):
        assert curves[order][0] == pytest.approx(metrics["task"]["accuracy"])
        assert curves[order][-1] == pytest.approx(metrics["task_gold_concepts"]["accuracy"])
    assert curves["random_repeats"] is None  # four concepts: the exact expectation, nothing drawn


@pytest.mark.parametrize(
    "layer, certain", [({}, False), ({"concept_activation": "probs"}, True), ({"concept_layer": "embedding"}, True)]
)
def test_confirming_the_predicted_value_makes_a_concept_certain_where_an_intervention_is_certainty(
    tiny_bert_dir, cebab_small, layer, certain
):
    """Forced logits are a typical reading of a value, not a surer one: a scalar concept confirmed
    stays as it is. A one-hot intervention (probabilities, concept embeddings) is the value with
    certainty, which CEM's interventions and RandInt's training set right or wrong: confirmed, the
    concept becomes certain. So the curves end at every concept forced to gold there, while
    ``evaluate``'s gold-concept figure still corrects only the wrong concepts."""
    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, mode="joint", **layer).eval()
    text = cebab_small.test.texts[0]
    before = model.predict(text)[0]
    service = before.concepts["service"]
    after = model.intervene(text, {"service": service.value})[0].after
    assert max(service.probabilities.values()) < 0.99  # a random model is unsure
    if certain:
        assert after.concepts["service"].probabilities[service.value] == 1.0
        assert after.probabilities != pytest.approx(before.probabilities, abs=1e-6)
    else:
        assert after == before

    test = cebab_small.test
    metrics = model.evaluate(test)
    found = TextOutputs(model).get(test.texts)
    states = [torch.from_numpy(x) for x in found["concept_states"]]
    predicted = np.stack([logits.argmax(-1) for logits in found["concept_logits"]], axis=1)
    wrong = torch.from_numpy(np.where(predicted == test.concepts, MISSING, test.concepts))
    with torch.no_grad():
        corrected = model.intervened_label_logits(states, wrong, correct_only=False).argmax(-1).numpy()
    assert metrics["task_gold_concepts"]["accuracy"] == pytest.approx(float((corrected == test.labels).mean()))
    curves = run_suite(model, cebab_small, "interventions", seed=0)["interventions"]
    end = metrics["task_forced_concepts" if certain else "task_gold_concepts"]["accuracy"]
    assert all(curves[order][-1] == pytest.approx(end) for order in ("random", "uncertainty", "expected_change"))

    # expected change: Σ_v p_kv·TV(ŷ, ŷ[k := v]), the predicted value counted only where it makes certain
    from lucidlm.intervene import expected_change_scores

    with torch.no_grad():
        scores = expected_change_scores(model, states)
        base = torch.from_numpy(found["label_logits"]).softmax(-1)
        manual = torch.zeros_like(scores)
        for k, logits in enumerate(found["concept_logits"]):
            p = torch.from_numpy(logits).softmax(-1)
            for v in range(p.shape[1]):
                values = torch.full_like(wrong, MISSING)
                values[:, k] = v
                set_to_v = model.intervened_label_logits(states, values, correct_only=False).softmax(-1)
                counted = torch.ones(len(p)) if certain else torch.from_numpy(predicted[:, k] != v).float()
                manual[:, k] += counted * p[:, v] * 0.5 * (set_to_v - base).abs().sum(-1)
    torch.testing.assert_close(scores, manual)


@pytest.mark.parametrize("layer", [{}, {"concept_activation": "probs"}, {"concept_layer": "embedding"}])
def test_setting_a_concept_changes_its_own_activation_only(tiny_bert_dir, cebab_small, layer):
    """What the exact random curve rests on: for every set of concepts, mixing each concept's
    corrected activation (one call with every gold value) into the predicted ones gives the
    label logits of the intervention with that set, rows already right included."""
    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, mode="joint", **layer).eval()
    test = cebab_small.test
    states = [torch.from_numpy(x) for x in TextOutputs(model).get(test.texts)["concept_states"]]
    with torch.no_grad():
        predicted, corrected = (
            model.concept_activations(states),
            model.intervened_activations(states, torch.from_numpy(test.concepts)),
        )
        for mask in range(16):
            chosen = (mask >> np.arange(4)) & 1 == 1
            mixed = model.label_from_concepts([c if on else p for on, c, p in zip(chosen, corrected, predicted)])
            full = model.intervened_label_logits(states, torch.from_numpy(np.where(chosen, test.concepts, MISSING)))
            assert torch.allclose(mixed, full)


def test_sentence_pairs_are_scored_on_both_texts(tmp_path, tiny_bert_dir):
    """Rows that share their first text but not their second are different inputs: the suite's
    cache keys and runs both texts, so its figures are the model's own on the pair task."""
    rows = ["premise,hypothesis,label,topic,mood"]
    for i in range(24):
        rows.append(
            f"The kitchen closed at {i % 4} pm.,{'Dinner was served late' if i % 2 else 'Nobody could eat'} on day {i}.,"
            f"{'yes' if i % 3 else 'no'},{'food' if i % 2 else 'time'},{'calm' if i % 5 else 'angry'}"
        )
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    from lucidlm import load_task

    task = load_task(
        str(tmp_path / "pairs.csv"),
        text="premise",
        text_pair="hypothesis",
        label="label",
        concepts=["topic", "mood"],
        dev=str(tmp_path / "pairs.csv"),
        test=str(tmp_path / "pairs.csv"),
    )
    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=task.spec, mode="joint", seed=1)
    split = task.test
    inferred = model.infer(split)
    found = TextOutputs(model).get(split.texts, split.text_pairs)
    np.testing.assert_allclose(found["label_logits"], inferred["label_logits"], atol=1e-5)
    np.testing.assert_allclose(found["concept_logits"][0], inferred["concept_logits"][0], atol=1e-5)
    assert len({tuple(np.round(x, 5)) for x in found["label_logits"][:4]}) == 4  # same premise, other pairs
    results = run_suite(model, task, "faithfulness,interventions")
    metrics = model.evaluate(split)
    assert results["task"] == metrics["task"]
    assert results["interventions"]["random"][0] == pytest.approx(metrics["task"]["accuracy"])
    assert results["interventions"]["random"][-1] == pytest.approx(metrics["task_gold_concepts"]["accuracy"])
    assert results["faithfulness"]["concepts"]["n"] == len(split)


# ---- the suite ------------------------------------------------------------------------------


def test_unknown_suite_names_are_refused():
    assert parse_suites("causal, faithfulness,causal") == ["causal", "faithfulness"]
    with pytest.raises(LucidError, match=r"unknown suite\(s\) \['faithful'\]"):
        parse_suites("faithful,causal")


def test_families_without_concepts_skip_with_a_reason(tiny_bert_dir, cebab_small, cebab_dir):
    standard = StandardLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec)
    proto = PrototypeLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, prototypes_per_class=2)
    for model, own in ((standard, "integrated_gradients"), (proto, "integrated_gradients")):
        results = run_suite(
            model, cebab_small, "faithfulness,causal,interventions", samples=2, cebab=cebab_dir, causal_splits=("test",)
        )
        assert "no concepts" in results["faithfulness"]["concepts"]["skipped"]
        assert "no concepts" in results["interventions"]["skipped"]
        tokens = results["faithfulness"]["tokens"]
        assert list(tokens["targets"]) == ["label"] and tokens["own_explainer"] == own
        extra = {"attention"} if model is proto else set()  # proto-lm's attention is scored beside its attributions
        assert set(tokens["targets"]["label"]) == {own, "gradient_x_input", "random"} | extra
        effects = results["causal"]["splits"]["test"]
        assert "skipped" in effects["estimators"]["concept_intervention"]
        assert effects["estimators"]["average_training_effect"]["overall"]["n"] == effects["n_pairs"] == 1313
    no_data = run_suite(standard, cebab_small, "causal")
    assert "no CEBaB data" in no_data["causal"]["skipped"]


def test_sparse_concepts_are_explained_through_their_subnetworks(tiny_bert_dir, cebab_small):
    model = SparseConceptLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, sparsity=0.5)
    for layer in model.subnetworks.values():  # a different random half of the weights for every concept
        generator = torch.Generator().manual_seed(layer.mask.numel())
        layer.mask.copy_(torch.rand(layer.mask.shape, generator=generator) < 0.5)
    results = run_suite(model, cebab_small, "faithfulness,interventions", samples=2)
    targets = results["faithfulness"]["tokens"]["targets"]
    assert sorted(targets) == sorted(cebab_small.spec.concept_names)  # the label reads the concepts: no label target
    assert set(targets["food"]) == {"integrated_gradients", "gradient_x_input", "random"}
    assert results["interventions"]["uncertainty"][0] == pytest.approx(results["task"]["accuracy"])


def test_same_seed_same_results_other_seed_other_random_baseline(joint_model, cebab_small):
    first, again, other = (run_suite(joint_model, cebab_small, "faithfulness", samples=2, seed=s) for s in (3, 3, 4))
    assert first == again
    random = lambda r: r["faithfulness"]["concepts"]["modes"]["mean"]["random"]  # noqa: E731
    assert random(first) != random(other)


# ---- the command line -----------------------------------------------------------------------


def test_cli_evaluate_suite_writes_json_markdown_and_plot(tmp_path, tiny_bert_dir, cebab_dir):
    config = {
        "data": {"source": "cebab", "path": str(cebab_dir), "subsample": {"train": 48, "dev": 24, "test": 40}},
        "model": {"family": "bottleneck", "mode": "joint", "backbone": str(tiny_bert_dir)},
        "training": {"epochs": 1, "batch_size": 16, "seed": 0},
    }
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(config))
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(tmp_path / "tiny.yaml"), "-o", str(tmp_path / "run"), "--json"])
    assert trained.exit_code == 0, trained.stderr

    bad = runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--suite", "faithfulness,causal,curves"])
    assert (
        bad.exit_code == 1 and "unknown suite(s) ['curves']" in bad.stderr and len(bad.stderr.strip().splitlines()) <= 2
    )

    out = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "run"),
            "--suite",
            "faithfulness,causal,interventions",
            "--samples",
            "3",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.stderr
    written = json.loads((out / "evaluation.json").read_text())
    assert (
        written["command"].startswith("lucidlm evaluate")
        and "--suite faithfulness,causal,interventions" in written["command"]
    )
    results = written["results"][tmp_path.joinpath("run").name]
    assert json.loads(result.stdout)["results"] == results
    assert results["n"] == 40 and results["suites"] == ["faithfulness", "causal", "interventions"]

    tokens = results["faithfulness"]["tokens"]
    assert tokens["n"] == 3 and tokens["fractions"] == [0.01, 0.05, 0.1, 0.2, 0.5]
    assert set(tokens["targets"]) == {"label", "food", "ambiance", "service", "noise"}
    for explainers in tokens["targets"].values():
        for scores in explainers.values():
            for name in ("comprehensiveness", "sufficiency"):
                assert len(scores[name]["per_step"]) == 5 and -1 <= scores[name]["aopc"] <= 1

    modes = results["faithfulness"]["concepts"]["modes"]
    assert set(modes) == {"unknown", "mean"} and len(modes["mean"]["random"]["sufficiency"]["per_step"]) == 3

    causal = results["causal"]
    assert causal["baseline_training_split"] == "train_inclusive" and causal["baseline_training_pairs"] > 5000
    assert {s: e["n_pairs"] for s, e in causal["splits"].items()} == {"dev": 1299, "test": 1313}
    for effects in causal["splits"].values():
        for scores in effects["estimators"].values():
            assert set(scores["per_aspect"]) == {"food", "ambiance", "service", "noise"}
            assert 0 <= scores["overall"]["l2"] <= 2 and 0 <= scores["overall"]["cosine"] <= 2
            assert 0 <= scores["overall"]["norm_diff"] <= math.sqrt(2)

    curves = results["interventions"]
    assert curves["k"] == [0, 1, 2, 3, 4] and all(0 <= a <= 1 for a in curves["random"] + curves["uncertainty"])
    assert curves["random"][0] == curves["uncertainty"][0] == pytest.approx(results["task"]["accuracy"])

    markdown = (out / "evaluation.md").read_text()
    for heading in (
        "## Token faithfulness",
        "## Concept faithfulness",
        "## Causal concept effects",
        "## Intervention curves",
    ):
        assert heading in markdown
    assert (out / "intervention_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_responsiveness_counts_changes_to_and_away_from_gold():
    from lucidlm.evaluation.honesty import responsiveness

    predicted, corrected = np.array([0, 1, 2, 2, 0, 1]), np.array([1, 1, 0, 1, 0, 2])
    labels, misread = np.array([1, 1, 2, 0, 0, 0]), np.array([True, True, True, True, False, True])
    r = responsiveness(predicted, corrected, labels, misread)  # row 4 is not misread: not counted
    assert (r["rows_misread"], r["changed"], r["to_gold"], r["away_from_gold"]) == (5, 4, 1, 1)
    assert (r["changed_share"], r["to_gold_share"], r["away_from_gold_share"]) == (0.8, 0.25, 0.25)
    nothing = responsiveness(predicted, predicted, labels, misread)
    assert nothing["changed"] == 0 and nothing["to_gold_share"] is None


def test_honesty_by_hand_and_through_the_cli(joint_model, cebab_small, tmp_path, tiny_bert_dir, cebab_dir):
    """Completeness from its definition, of the gold concept values and of those the model reads;
    forced and per-concept figures equal the model's own interventions; the CLI reads the black
    box's accuracy from its run."""
    from lucidlm.evaluation.honesty import bottleneck_honesty, completeness, one_hot_concepts

    assert completeness(0.52, 0.68, 0.27) == pytest.approx(0.25 / 0.41)
    assert completeness(0.52, 0.27, 0.27) is None  # a black box at chance: nothing to carry
    assert one_hot_concepts(np.array([[0, MISSING], [2, 1]]), [3, 2]).tolist() == [[1, 0, 0, 0, 0], [0, 0, 1, 0, 1]]
    results = run_suite(joint_model, cebab_small, "honesty", black_box_accuracy=0.5)
    h = results["honesty"]
    metrics = joint_model.evaluate(cebab_small.test)
    assert h["task_accuracy"] == pytest.approx(metrics["task"]["accuracy"])
    assert h["task_accuracy_all_concepts_forced"] == pytest.approx(metrics["task_forced_concepts"]["accuracy"])
    assert h["completeness"] == pytest.approx(
        (h["concept_values_accuracy"] - h["chance_accuracy"]) / (0.5 - h["chance_accuracy"])
    )
    split = cebab_small.test
    for k, (name, change) in enumerate(h["accuracy_change_one_concept_corrected"].items()):
        hits = 0
        for i, text in enumerate(split.texts):
            value = split.concepts[i, k]
            correction = {name: joint_model.spec.concepts[k].values[value]} if value != MISSING else {}
            hits += joint_model.intervene(text, correction)[0].after.label == joint_model.spec.classes[split.labels[i]]
        assert change == pytest.approx(hits / len(split) - h["task_accuracy"], abs=1e-9)
    assert h["completeness_of_predicted_values"] == pytest.approx(
        (h["predicted_values_accuracy"] - h["chance_accuracy"]) / (0.5 - h["chance_accuracy"])
    )
    # The model's own a_c differs from the concept set's only through the values it misreads: with
    # gold values equal to what it reads, the two are one figure.
    read = np.stack([logits.argmax(-1) for logits in joint_model.infer(split)["concept_logits"]], axis=1)
    assert (read != split.concepts).any()  # the tiny model misreads: the case is not trivial
    as_read = bottleneck_honesty(
        joint_model,
        TextOutputs(joint_model),
        cebab_small.train,
        dataclasses.replace(split, concepts=read),
        black_box_accuracy=0.5,
        dev=cebab_small.dev,
    )
    assert as_read["concept_values_accuracy"] == as_read["predicted_values_accuracy"] == h["predicted_values_accuracy"]
    # a_c is the best of the named predictors on dev, refit by hand and scored on the split
    from lucidlm.evaluation.honesty import CONCEPT_PREDICTORS

    sizes = [len(c.values) for c in joint_model.spec.concepts]
    x, x_dev = one_hot_concepts(cebab_small.train.concepts, sizes), one_hot_concepts(cebab_small.dev.concepts, sizes)
    dev_scores = {
        name: float((make().fit(x, cebab_small.train.labels).predict(x_dev) == cebab_small.dev.labels).mean())
        for name, make in CONCEPT_PREDICTORS.items()
    }
    assert h["concept_predictor_dev_accuracy"] == dev_scores and len(dev_scores) == 6
    assert dev_scores[h["concept_predictor"]] == max(dev_scores.values())
    chosen = CONCEPT_PREDICTORS[h["concept_predictor"]]().fit(x, cebab_small.train.labels)
    assert h["concept_values_accuracy"] == float(
        (chosen.predict(one_hot_concepts(split.concepts, sizes)) == split.labels).mean()
    )
    # responsiveness, through the public API: each row's misread concepts set to gold by ``intervene``
    misread_rows = changed = to_gold = away = 0
    for i, text in enumerate(split.texts):
        correction = {
            c.name: c.values[split.concepts[i, k]]
            for k, c in enumerate(joint_model.spec.concepts)
            if split.concepts[i, k] != MISSING and read[i, k] != split.concepts[i, k]
        }
        if not correction:
            continue
        result = joint_model.intervene(text, correction)[0]
        gold_label = joint_model.spec.classes[split.labels[i]]
        misread_rows += 1
        changed += result.after.label != result.before.label
        to_gold += result.after.label != result.before.label and result.after.label == gold_label
        away += result.after.label != result.before.label and result.before.label == gold_label
    # what the values carry: the mean of each decision's share, as ``explain`` gives it, and the
    # decisions the value readings alone (probabilities × forced logits; the scalar layer) make
    shares = [joint_model.explain(text, steps=1).concept_values_share for text in split.texts]
    assert h["concept_values_share"] == pytest.approx(float(np.mean(shares)), abs=1e-6)
    probs = [torch.from_numpy(p).softmax(-1) for p in joint_model.infer(split)["concept_logits"]]
    table = joint_model.concept_layer.intervention_table
    readings = [p @ table[k, : p.shape[1], : p.shape[1]] for k, p in enumerate(probs)]
    with torch.no_grad():
        alone = joint_model.label_from_concepts(readings).argmax(-1).numpy()
    decided = joint_model.infer(split)["label_logits"].argmax(-1)
    assert h["decisions_from_values_alone"] == pytest.approx(float((alone == decided).mean()))
    r = h["responsiveness"]
    assert (r["rows_misread"], r["changed"], r["to_gold"], r["away_from_gold"]) == (
        misread_rows,
        changed,
        to_gold,
        away,
    )
    assert misread_rows > 0 and r["changed_share"] == pytest.approx(changed / misread_rows)
    markdown = render_markdown({"joint": results})
    assert "Is the bottleneck honest?" in markdown and f"joint: {h['concept_predictor']}" in markdown
    assert f"| joint | {r['rows_misread']} | {r['changed_share']:.3f} |" in markdown
    assert f"| {h['concept_values_accuracy']:.3f} | {h['predicted_values_accuracy']:.3f} |" in markdown

    (tmp_path / "black").mkdir()
    (tmp_path / "black" / "run.json").write_text(json.dumps({"metrics": {"test": {"task": {"accuracy": 0.75}}}}))
    joint_model.save_pretrained(tmp_path / "joint")
    config = {
        "data": {"source": "cebab", "path": str(cebab_dir), "subsample": {"train": 96, "dev": 48, "test": 48}},
        "model": {"family": "bottleneck", "backbone": str(tiny_bert_dir)},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    shown = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "joint"),
            "--suite",
            "honesty",
            "--config",
            str(tmp_path / "c.yaml"),
            "--black-box",
            str(tmp_path / "black"),
            "--json",
        ],
    )
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["results"]["honesty"]["black_box_accuracy"] == 0.75


def test_sparse_models_estimate_causal_effects_by_rewiring_their_subnetworks(tiny_bert_dir, cebab_dir):
    """SparseCBM's own estimate: the label change when the edited aspect's subnetwork is rewired
    toward the edit's value for the original text only; the masks are as before afterwards."""
    from lucidlm import SubnetworkRewiring, load_task
    from lucidlm.evaluation.causal import causal_effects, load_cebab_pairs
    from lucidlm.evaluation.outputs import TextOutputs

    model = SparseConceptLM.from_backbone(
        str(tiny_bert_dir), task=load_task("cebab", path=cebab_dir).spec, sparsity=0.5
    )
    for layer in model.subnetworks.values():
        layer.mask.copy_(
            torch.rand(layer.mask.shape, generator=torch.Generator().manual_seed(layer.mask.numel())) < 0.5
        )
    masks = [layer.mask.clone() for layer in model.subnetworks.values()]
    pairs = load_cebab_pairs(cebab_dir, "test")[:5]
    effects = causal_effects(model, TextOutputs(model), pairs, {}, rewiring=(0.1, "taylor"))
    rewired = effects["estimators"]["subnetwork_rewiring"]
    assert rewired["overall"]["n"] == 5 and (rewired["fraction"], rewired["score"]) == (0.1, "taylor")
    distances = []
    for pair in pairs:
        result = model.intervene([pair.original], SubnetworkRewiring(pair.aspect, pair.after, 0.1, "taylor"))[0]
        estimate = np.array(
            [result.after.probabilities[c] - result.before.probabilities[c] for c in model.spec.classes]
        )
        truth = np.array(
            [model.predict(pair.edit)[0].probabilities[c] - result.before.probabilities[c] for c in model.spec.classes]
        )
        distances.append(np.linalg.norm(truth - estimate))
        assert np.abs(estimate).sum() > 0  # the rewiring moved the label
    assert rewired["overall"]["l2"] == pytest.approx(np.mean(distances), abs=1e-5)
    assert all(torch.equal(a, layer.mask) for a, layer in zip(masks, model.subnetworks.values()))
    assert "subnetwork_rewiring" not in causal_effects(model, TextOutputs(model), pairs, {})["estimators"]
