"""CB-LLM's label-free objective (``concept_objective: cos3``) beside today's (``soft_targets``):
the cubed cosine similarity against the published formulas, a tiny cos³ bottleneck (one ReLU
activation per statement, a label layer of width |C|, saved and loaded, set by a person), the
choice by name, and the record of the elastic-net path's convergence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from lucidlm import LucidError
from lucidlm.data import MISSING
from lucidlm.experiment import load_experiment_task, read_experiment
from lucidlm.models import ConceptBottleneckLM, SparseConfig, load_pretrained
from lucidlm.models.bottleneck import BottleneckConfig
from lucidlm.models.label_free import (
    CONCEPT_OBJECTIVES,
    StatementLayer,
    cos3_loss,
    cos_cubed_similarity,
    intervene_scores,
    statement_activations,
)
from lucidlm.models.label_head import ELASTIC_PATH, fit_logistic
from lucidlm.training import TrainingConfig

STATEMENTS = [
    {"statement": "The food was delicious.", "classes": ["1"]},
    {"statement": "The service was slow.", "classes": ["0"]},
    {"statement": "It was too noisy."},
]
TEXT = "The food was delicious."


def published_cb_llm(f: np.ndarray, s: np.ndarray) -> float:
    """CB-LLM's ``cos_sim_cubed`` (classification/utils.py), in numpy: centre each row over its
    concepts, cube, L2-normalise each row, the rows' dot products, their mean."""
    f, s = f - f.mean(-1, keepdims=True), s - s.mean(-1, keepdims=True)
    f, s = f**3, s**3
    f, s = f / np.linalg.norm(f, axis=-1, keepdims=True), s / np.linalg.norm(s, axis=-1, keepdims=True)
    return float((f * s).sum(-1).mean())


def published_label_free_cbm(f: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Oikarinen et al.'s ``cos_similarity_cubed_single`` (Label-free CBM, similarity.py): the same
    along dim 0, one similarity per concept over the batch."""
    f, s = f - f.mean(0, keepdims=True), s - s.mean(0, keepdims=True)
    f, s = f**3, s**3
    f, s = f / np.linalg.norm(f, axis=0, keepdims=True), s / np.linalg.norm(s, axis=0, keepdims=True)
    return (s * f).sum(0)


def test_the_cubed_cosine_is_the_published_formula():
    # by hand: f = (1, 2, 3) centres to (-1, 0, 1), cubes to itself, normalises to (-1, 0, 1)/√2;
    # s = (0, 0, 3) centres to (-1, -1, 2), cubes to (-1, -1, 8), normalises by √66: cos = 9/√132
    one = cos_cubed_similarity(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 3.0]]))
    assert one.shape == (1,) and one.item() == pytest.approx(9 / np.sqrt(132), abs=1e-6)

    rng = np.random.default_rng(0)
    f, s = rng.normal(size=(5, 4)), np.clip(rng.normal(size=(5, 4)), 0, None) + 0.01
    ft, st = torch.tensor(f, requires_grad=True), torch.tensor(s)
    loss = cos3_loss(ft, st)
    assert loss.item() == pytest.approx(-published_cb_llm(f, s), abs=1e-6)
    np.testing.assert_allclose(
        cos_cubed_similarity(ft, st, dim=0).detach().numpy(), published_label_free_cbm(f, s), atol=1e-6
    )
    loss.backward()
    assert torch.isfinite(ft.grad).all() and ft.grad.abs().sum() > 0
    # a row's scale and offset do not count; a perfect match is 1
    scaled = torch.tensor(3 * f + 7 * rng.normal(size=(5, 1)))
    assert cos3_loss(scaled, st).item() == pytest.approx(loss.item(), abs=1e-6)
    assert cos3_loss(st, st).item() == pytest.approx(-1.0, abs=1e-6)


def label_free_data(tmp_path) -> dict:
    rows = ["review,stars"] + [
        f"{'The food was delicious' if i % 2 else 'The service was slow'} on visit {i}.,{i % 2}" for i in range(48)
    ]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    csv = str(tmp_path / "reviews.csv")
    return {
        "source": csv,
        "text": "review",
        "label": "stars",
        "dev": csv,
        "test": csv,
        "automatic_concepts": {"statements": STATEMENTS, "cache_dir": str(tmp_path / "cache")},
    }


@pytest.fixture(scope="module")
def cos3_run(tmp_path_factory, tiny_bert_dir):
    """A tiny cos³ bottleneck, trained (x→c, then the elastic-net label layer) and saved."""
    tmp_path = tmp_path_factory.mktemp("cos3")
    task = load_experiment_task(label_free_data(tmp_path))
    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=task.spec, mode="sequential", concept_objective="cos3", label_penalty="elastic"
    )
    model.fit(task.train, task.dev, TrainingConfig(epochs=3, batch_size=8, head_learning_rate=1e-2, progress=False))
    model.save_pretrained(tmp_path / "run")
    return model, task, tmp_path / "run"


def test_the_data_carries_the_scores_that_cos3_learns_corrected_on_train_and_dev(tmp_path):
    task = load_experiment_task(label_free_data(tmp_path))
    train, test = task.train, task.test
    assert train.statement_scores.shape == (48, 3) and train.statement_scores.dtype == np.float32
    delicious = np.array(["delicious" in t for t in train.texts])
    # ACC: "The food was delicious." (class 1) scores 0 on class-0 rows; negatives are 0
    assert np.all(train.statement_scores[train.labels == 0, 0] == 0) and np.all(train.statement_scores >= 0)
    np.testing.assert_array_equal(
        task.dev.statement_scores, train.statement_scores
    )  # dev is corrected too (CB-LLM's validation)
    assert np.any(test.statement_scores[~delicious, 0] != 0)  # test: the raw scores
    assert train.select([0, 2]).statement_scores.shape == (2, 3)


def test_a_cos3_bottleneck_has_one_relu_activation_per_statement_and_a_label_layer_of_width_c(cos3_run):
    model, task, _ = cos3_run
    assert isinstance(model.concept_layer, StatementLayer) and model.config.concept_layer == "statement"
    assert model.label_head.weight.shape == (2, 3)
    assert model.summary()["concept_objective"] == "cos3" and model.summary()["mode"] == "sequential"
    seen = statement_activations(model, task.test.texts)
    assert seen["activations"].shape == (48, 3) and np.all(seen["activations"] >= 0)
    np.testing.assert_array_equal(seen["activations"], np.maximum(seen["scores"], 0))
    assert np.all(seen["activations"].max(0) > 0)  # every statement fires on some text
    # what the label reads is what statement_activations shows
    out = model.forward_texts(task.test.texts[:4])
    activations = torch.cat(model.concept_activations(out.concept_states), -1).numpy()
    np.testing.assert_allclose(activations, seen["activations"][:4], atol=1e-5)
    # the standardisation is the training rows': mean 0, unbiased spread 1 of (f - μ)/σ over them
    train_z = statement_activations(model, task.train.texts)["scores"]
    np.testing.assert_allclose(train_z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(train_z.std(0, ddof=1), 1, atol=1e-3)
    # a statement is "yes" where it fires; p(yes) = σ(z / T), T its temperature fitted on dev (§7.2)
    prediction = model.predict([task.test.texts[0]])[0]
    z = seen["scores"][0]
    for j, name in enumerate(model.spec.concept_names):
        t = model.temperatures.concepts.get(name, 1.0)
        assert prediction.concepts[name].value == ("yes" if z[j] > 0 else "no")
        assert prediction.concepts[name].probabilities["yes"] == pytest.approx(1 / (1 + np.exp(-z[j] / t)), abs=1e-4)
    history = model.training_history
    assert [h["stage"] for h in history if "stage" in h][-1] == "c→y"
    assert history[-1]["concept_objective"] == "cos3" and history[-1]["features"] == 3
    epochs = [h for h in history if "epoch" in h]
    assert epochs and all(-1.0 <= h["dev_score"] <= 1.0 for h in epochs)  # the x→c stage selected by cos³ on dev


def test_a_saved_cos3_bottleneck_loads_and_predicts_the_same(cos3_run):
    model, task, run = cos3_run
    saved = json.loads((run / "config.json").read_text())
    assert saved["model"]["concept_objective"] == "cos3" and saved["model"]["concept_layer"] == "statement"
    loaded = load_pretrained(run)
    assert isinstance(loaded.concept_layer, StatementLayer)
    for name in ("mean", "std", "low", "high"):
        assert torch.equal(getattr(loaded.concept_layer, name), getattr(model.concept_layer, name))
    assert loaded.predict(task.test.texts[:6]) == model.predict(task.test.texts[:6])
    np.testing.assert_array_equal(
        statement_activations(loaded, task.test.texts[:6])["activations"],
        statement_activations(model, task.test.texts[:6])["activations"],
    )
    # its explanation: each statement's contribution is its label-layer weight × its activation (over the
    # label's temperature, §7.2); with the bias they sum to the label's logit
    explanation = loaded.explain(TEXT, steps=4)
    label = loaded.spec.label_index(explanation.prediction.label)
    t = loaded.temperatures.label
    weight, bias = loaded.label_head.weight[label].detach().numpy(), float(loaded.label_head.bias[label].detach())
    activations = statement_activations(loaded, [TEXT])["activations"][0]
    assert [c.concept for c in explanation.concepts] == loaded.spec.concept_names
    np.testing.assert_allclose(
        [c.contribution for c in explanation.concepts], weight * activations / t, rtol=1e-4, atol=1e-4
    )
    logit = float(loaded.forward_texts([TEXT]).label_logits[0, label])
    assert sum(c.contribution for c in explanation.concepts) + bias / t == pytest.approx(logit, rel=1e-4, abs=1e-3)
    assert len(explanation.tokens) == len(STATEMENTS) + 1  # token attributions for each statement and the label


def test_setting_a_statement_moves_its_activation_and_the_label(cos3_run):
    model, task, _ = cos3_run
    weight = model.label_head.weight.detach().numpy()
    read = np.flatnonzero(np.abs(weight[1] - weight[0]) > 0)
    assert read.size, "the label layer reads no statement"
    j = int(read[np.argmax(np.abs(weight[1] - weight[0])[read])])
    name = model.spec.concept_names[j]
    layer = model.concept_layer
    before = statement_activations(model, [TEXT])["activations"][0, j]

    # yes/no: the statement's largest and smallest standardised score of the training rows
    predicted = model.predict([TEXT])[0].concepts[name].value
    other = "no" if predicted == "yes" else "yes"
    result = model.intervene([TEXT], {name: other})[0]
    expected = float(torch.relu(layer.high[j] if other == "yes" else layer.low[j]))
    assert result.after.concepts[name].value == other and result.after.concepts[name].probabilities[other] == 1.0
    out = model.forward_texts([TEXT])
    values = torch.full((1, 3), MISSING, dtype=torch.long)
    values[0, j] = 1 if other == "yes" else 0
    set_activation = model.intervened_activations(out.concept_states, values)[j].item()
    assert set_activation == pytest.approx(expected) and set_activation != pytest.approx(before)
    if other == "no":
        assert set_activation == 0.0
    # the label logits move by the label layer's weights on the statement × its change (over the label's temperature)
    moved = (model.intervened_label_logits(out.concept_states, values) - out.label_logits)[0].detach().numpy()
    np.testing.assert_allclose(
        moved, weight[:, j] * (set_activation - before) / model.temperatures.label, rtol=1e-4, atol=1e-5
    )
    assert np.abs(moved).max() > 0

    # a number: the standardised score itself; far enough along the weight, the label follows it
    sign = np.sign(weight[1, j] - weight[0, j])
    for z, label in ((50.0 * sign, "1"), (-50.0 * sign, "0")):  # noqa: B007
        moved = intervene_scores(model, TEXT, {name: z})[0]
        assert moved.interventions == {name: f"{z:g}"}
        if z > 0:
            assert moved.after.concepts[name].value == "yes"
    up, down = (intervene_scores(model, TEXT, {name: z})[0].after for z in (50.0, -50.0))
    assert {up.label, down.label} == {"0", "1"}  # raising and lowering one statement gives both labels
    assert down.concepts[name].probabilities["yes"] == pytest.approx(0.0, abs=1e-6)

    with pytest.raises(LucidError, match="unknown concept 'The soup was cold.'"):
        intervene_scores(model, TEXT, {"The soup was cold.": 1.0})
    with pytest.raises(LucidError, match="expected a number"):
        intervene_scores(model, TEXT, {name: "high"})


def test_the_objective_is_chosen_by_name_and_an_unknown_one_is_one_clear_error(tmp_path, tiny_bert_dir):
    assert CONCEPT_OBJECTIVES.names == ["soft_targets", "cos3"]
    assert BottleneckConfig().concept_objective == "soft_targets" and BottleneckConfig().concept_layer == "scalar"
    config = {
        "data": label_free_data(tmp_path),
        "model": {
            "family": "bottleneck",
            "mode": "sequential",
            "concept_objective": "cos4",
            "backbone": str(tiny_bert_dir),
        },
    }
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(LucidError) as error:
        read_experiment(tmp_path / "bad.yaml")  # checked when the config is read, before any data
    assert str(error.value) == "concept_objective: expected one of ['soft_targets', 'cos3'], found 'cos4'"
    assert "\n" not in str(error.value)
    with pytest.raises(LucidError, match=r"concept_objective 'cos3': .*\(mode: sequential\); found mode 'joint'"):
        BottleneckConfig(concept_objective="cos3")
    with pytest.raises(
        LucidError,
        match="concept_objective 'cos3' trains one activation per statement .*found concept_layer 'embedding'",
    ):
        BottleneckConfig(mode="sequential", concept_objective="cos3", concept_layer="embedding")
    with pytest.raises(LucidError, match="concept_layer 'statement' is trained by concept_objective 'cos3'"):
        BottleneckConfig(mode="sequential", concept_layer="statement")
    with pytest.raises(LucidError, match="concept_objective: expected one of"):
        SparseConfig(concept_objective="cos4")  # SparseCBM's config reads it too


def test_cos3_refuses_data_without_statement_scores_and_concepts_that_are_not_statements(
    tmp_path, tiny_bert_dir, cebab_small
):
    from dataclasses import replace

    task = load_experiment_task(label_free_data(tmp_path))
    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=task.spec, mode="sequential", concept_objective="cos3"
    )
    with pytest.raises(LucidError, match="concept_objective 'cos3' learns the statements' scores; the data has none"):
        model.fit(replace(task.train, statement_scores=None), config=TrainingConfig(epochs=1, progress=False))
    with pytest.raises(
        LucidError, match="one activation per statement needs two-valued concepts .*'food' has 3 values"
    ):
        ConceptBottleneckLM.from_backbone(
            str(tiny_bert_dir), task=cebab_small.spec, mode="sequential", concept_objective="cos3"
        )


def test_soft_targets_stays_the_default_and_its_path_records_convergence(tmp_path, tiny_bert_dir):
    """Today's objective: two logits per statement, cross-entropy to σ((s − μ)/σ); the c→y stage
    records, per C, the non-zero weights, saga's iterations, whether it converged and how far from
    the optimum it stopped."""
    task = load_experiment_task(label_free_data(tmp_path))
    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=task.spec, mode="sequential", label_penalty="elastic"
    )
    assert model.config.concept_objective == "soft_targets" and model.label_head.weight.shape == (2, 6)
    model.fit(task.train, task.dev, TrainingConfig(epochs=1, batch_size=8, progress=False))
    head = model.training_history[-1]
    assert head["stage"] == "c→y" and head["concept_objective"] == "soft_targets" and head["features"] == 6
    assert (head["solver"], head["tol"], head["max_iter"]) == ("saga", 1e-3, 3000)
    assert len(head["path"]) == len(ELASTIC_PATH) and isinstance(head["converged"], bool)
    for point in head["path"]:
        assert set(point) >= {"C", "nonzero_weights", "dev_score", "n_iter", "max_iter", "converged", "optimality"}
        assert 0 <= point["nonzero_weights"] <= 2 * 6 and 1 <= point["n_iter"] <= point["max_iter"] == 3000
        assert point["converged"] == (point["n_iter"] < 3000) and 0.0 <= point["optimality"] < 0.05
    assert head["converged"] == all(p["converged"] for p in head["path"])


def test_a_converged_elastic_net_path_grows_its_support_with_c_on_a_separable_problem():
    """Five informative, independent features and five of noise, classes separable: at a tight
    tolerance every fit on the path converges, stops at the penalised optimum, and the number of
    non-zero weights never falls as the penalty weakens (C grows)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 10))
    y = (x[:, :5] @ np.array([2.0, -1.5, 1.0, 0.8, -0.6]) > 0).astype(int)
    fits = [fit_logistic(x, y, c, l1_ratio=0.5, tol=1e-6, max_iter=20000) for c in ELASTIC_PATH]
    records, nonzero = [record for _, record in fits], [int((head.coef_ != 0).sum()) for head, _ in fits]
    assert all(r["converged"] and r["n_iter"] < r["max_iter"] == 20000 for r in records)
    assert all(r["optimality"] < 1e-3 for r in records)
    assert nonzero == sorted(nonzero) and nonzero[0] < nonzero[-1]
    # a solver stopped after one epoch says so
    stopped = fit_logistic(x, y, 10.0, l1_ratio=0.5, tol=1e-8, max_iter=1)[1]
    assert not stopped["converged"] and stopped["n_iter"] == 1 and stopped["optimality"] > records[-1]["optimality"]


def test_a_cos3_run_trains_through_the_cli_and_says_its_objective(tmp_path, tiny_bert_dir):
    """``lucidlm train`` with ``concept_objective: cos3``: the saved run names it, a person sets a
    statement with ``--set``, and the concept-set report reads one signed weight per statement."""
    from typer.testing import CliRunner

    from lucidlm.cli import app

    def lucidlm(*args):
        return CliRunner().invoke(app, [str(a) for a in args])

    config = {
        "data": label_free_data(tmp_path),
        "model": {
            "family": "bottleneck",
            "mode": "sequential",
            "concept_objective": "cos3",
            "label_penalty": "elastic",
            "backbone": str(tiny_bert_dir),
        },
        "training": {"epochs": 1, "batch_size": 8},
    }
    (tmp_path / "cos3.yaml").write_text(yaml.safe_dump(config))
    trained = lucidlm("train", tmp_path / "cos3.yaml", "-o", tmp_path / "run", "--json")
    assert trained.exit_code == 0, trained.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["model"]["concept_objective"], saved["model"]["concept_layer"]) == ("cos3", "statement")
    assert json.loads((tmp_path / "run" / "run.json").read_text())["experiment"]["model"]["concept_objective"] == "cos3"
    head = saved["training_history"][-1]
    assert head["concept_objective"] == "cos3" and head["features"] == 3 and len(head["path"]) == len(ELASTIC_PATH)
    assert all({"n_iter", "converged", "optimality"} <= set(p) for p in head["path"])

    predicted = load_pretrained(tmp_path / "run").predict([TEXT])[0].concepts["It was too noisy."].value
    other = (
        "no" if predicted == "yes" else "yes"
    )  # confirming the predicted value changes nothing (docs/methods.md §6.8)
    result = lucidlm("intervene", tmp_path / "run", TEXT, "--set", f"It was too noisy.={other}", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["after"]["concepts"]["It was too noisy."]["probabilities"][other] == 1.0

    evaluated = lucidlm("evaluate", tmp_path / "run", "--suite", "concepts", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    results = json.loads(evaluated.stdout)["results"]
    assert results["model"]["concept_objective"] == "cos3"
    weight = load_pretrained(tmp_path / "run").label_head.weight.detach().numpy()
    for row in results["concepts"]["label_layer"]["1"]:  # class 1's weight on each statement it reads, with its sign
        assert row["weight"] == pytest.approx(
            float(weight[1, [s["statement"] for s in STATEMENTS].index(row["concept"])]), abs=1e-6
        )
    assert "| cos3 |" in (tmp_path / "run" / "evaluation.md").read_text()
