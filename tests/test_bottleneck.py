"""Mechanics of the concept bottleneck family on tiny random BERT and GPT-2 backbones."""

from pathlib import Path

import numpy as np
import pytest
import torch

from lucidlm import ConceptBottleneckLM, LucidError, StandardLM, load_pretrained
from lucidlm.data import MISSING
from lucidlm.intervene import overwrite_concepts
from lucidlm.models.auxiliary_losses import intervention_aware_loss, side_channel
from lucidlm.models.label_head import fit_label_head
from lucidlm.training import TrainingConfig
from lucidlm.web.report import overview

FAST = dict(epochs=1, batch_size=16, progress=False)
TEXT = "Great pasta, but we waited an hour and the room was loud."


def make(backbone_dir, task, mode, seed=0):
    """A bottleneck in ``mode``; ``standard``: the black-box family the bottleneck is compared with."""
    if mode == "standard":
        return StandardLM.from_backbone(str(backbone_dir), task=task.spec, seed=seed)
    return ConceptBottleneckLM.from_backbone(str(backbone_dir), task=task.spec, mode=mode, seed=seed)


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_gpt2_dir"])
@pytest.mark.parametrize("mode", ["standard", "joint", "sequential", "independent"])
def test_modes_train_and_predict_typed_outputs(fixture, mode, cebab_small, request):
    model = make(request.getfixturevalue(fixture), cebab_small, mode)
    model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    batch = model.encoder.batch([TEXT, "Bad."])
    out = model(batch["input_ids"], batch["attention_mask"])
    assert out.label_logits.shape == (2, 5)
    if mode == "standard":
        assert out.concept_logits == ()
    else:
        assert [tuple(c.shape) for c in out.concept_logits] == [(2, 3)] * 4
    metrics = model.evaluate(cebab_small.test)
    assert 0.0 <= metrics["task"]["accuracy"] <= 1.0 and metrics["n"] == 48
    assert ("concepts" in metrics) == (mode != "standard")
    prediction = model.predict(TEXT)[0]
    assert prediction.label in cebab_small.spec.classes
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert set(prediction.concepts) == (set() if mode == "standard" else {"food", "ambiance", "service", "noise"})


def test_sequential_freezes_concepts_and_fits_the_label_head_on_them(tiny_bert_dir, cebab_small):
    model = make(tiny_bert_dir, cebab_small, "sequential")
    model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    concepts_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("label_head")}
    assert model.training_history[-1]["stage"] == "c→y"
    # refitting only the c -> y stage leaves x -> c untouched
    fit_label_head(model, cebab_small.train, cebab_small.dev, gold=True, config=model_config())
    for k, v in model.state_dict().items():
        if not k.startswith("label_head"):
            assert torch.equal(v, concepts_before[k])


def model_config():
    from lucidlm import TrainingConfig

    return TrainingConfig(**FAST)


def test_intervention_sets_one_hot_and_recomputes_the_label(tiny_bert_dir, cebab_small):
    model = make(tiny_bert_dir, cebab_small, "joint")
    with torch.no_grad():  # make "service" matter to the label
        model.label_head.weight.zero_()
        model.label_head.weight[:, 6:9] = torch.tensor([[5.0, -5, 0]] * 2 + [[0, 0, 0]] + [[-5.0, 5, 0]] * 2)
    before = model.predict(TEXT)[0]
    low, high = (model.intervene(TEXT, {"service": v})[0] for v in ("Negative", "Positive"))
    assert low.before == before
    if before.concepts["service"].value != "Negative":  # a concept set to its own value is left as it is
        assert low.after.concepts["service"].probabilities == {"Negative": 1.0, "Positive": 0.0, "unknown": 0.0}
    assert low.after.concepts["food"] == before.concepts["food"]  # untouched concepts stay
    assert low.after.label in ("1", "2") and high.after.label in ("4", "5")
    assert low.label_changed or high.label_changed


def test_intervention_errors(tiny_bert_dir, cebab_small):
    model = make(tiny_bert_dir, cebab_small, "joint")
    with pytest.raises(LucidError, match="unknown concept 'decor'"):
        model.intervene(TEXT, {"decor": "Positive"})
    with pytest.raises(LucidError, match="concept 'service': unknown value 'Great'"):
        model.intervene(TEXT, {"service": "Great"})
    with pytest.raises(
        LucidError, match="a standard model cannot take a ConceptValues correction; it takes no corrections"
    ):
        make(tiny_bert_dir, cebab_small, "standard").intervene(TEXT, {"service": "Negative"})
    with pytest.raises(LucidError, match="the black-box baseline is the 'standard' family"):
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, mode="standard")


def test_overwrite_concepts_keeps_missing():
    probs = [torch.full((2, 3), 1 / 3), torch.full((2, 2), 0.5)]
    values = torch.tensor([[1, MISSING], [MISSING, 0]])
    new = overwrite_concepts(probs, values)
    torch.testing.assert_close(new[0], torch.tensor([[0, 1, 0], [1 / 3, 1 / 3, 1 / 3]]))
    torch.testing.assert_close(new[1], torch.tensor([[0.5, 0.5], [1, 0]]))


def test_gold_concept_metric_matches_manual_intervention(tiny_bert_dir, cebab_small):
    model = make(tiny_bert_dir, cebab_small, "joint")
    split = cebab_small.test
    metrics = model.evaluate(split)
    names = model.spec.concept_names
    values = model.spec.concepts[0].values
    hits = 0
    for i, text in enumerate(split.texts):
        gold = {n: values[v] for n, v in zip(names, split.concepts[i])}
        hits += model.intervene(text, gold)[0].after.label == model.spec.classes[split.labels[i]]
    assert metrics["task_gold_concepts"]["accuracy"] == pytest.approx(hits / len(split))


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_gpt2_dir"])
@pytest.mark.parametrize("mode", ["standard", "independent"])
def test_save_load_round_trip_predicts_exactly_the_same(fixture, mode, cebab_small, tmp_path, request):
    model = make(request.getfixturevalue(fixture), cebab_small, mode)
    model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    model.save_pretrained(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["backbone", "config.json", "model.safetensors"]
    assert not list(tmp_path.glob(".run.*"))  # no staging folder left behind
    loaded = type(model).from_pretrained(tmp_path / "run")
    assert loaded.config == model.config and loaded.spec == model.spec
    assert loaded.training_history == model.training_history
    a, b = model.infer(cebab_small.test), loaded.infer(cebab_small.test)
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    assert loaded.predict(TEXT) == model.predict(TEXT)


def test_not_a_saved_run(tmp_path):
    with pytest.raises(LucidError, match="no such folder"):
        load_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(LucidError, match="not a saved lucidlm run"):
        load_pretrained(tmp_path)


def test_same_seed_same_run(tiny_bert_dir, cebab_small):
    runs = []
    for _ in range(2):
        model = make(tiny_bert_dir, cebab_small, "joint", seed=3)
        model.fit(cebab_small.train, eval_data=cebab_small.dev, seed=3, epochs=2, progress=False)
        runs.append((model.evaluate(cebab_small.test), model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for k in runs[0][1]:
        assert torch.equal(runs[0][1][k], runs[1][1][k]), k
    other = make(tiny_bert_dir, cebab_small, "joint", seed=4)
    assert not torch.equal(other.label_head.weight, runs[0][1]["label_head.weight"])


def test_config_validation(tiny_bert_dir, cebab_small):
    with pytest.raises(LucidError, match="mode: expected one of"):
        make(tiny_bert_dir, cebab_small, "jointly")
    with pytest.raises(LucidError, match="unknown key"):
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, lambda_=1)


def test_forced_logits_are_typical_recognised_logits(tiny_bert_dir, cebab_small):
    """Setting a concept to v forces its logits to the mean logits of training rows whose gold
    and predicted value are both v."""
    model = make(tiny_bert_dir, cebab_small, "joint")
    logits = torch.tensor([[4.0, 0, 0], [2.0, 0, 0], [0, 3, 1], [0, 1, 5], [6.0, 0, 0]])
    gold = torch.tensor([0, 0, 1, 2, 1])  # the last row is predicted 0 but is 1: not used
    model.calibrate_interventions([logits] * 4, gold.unsqueeze(1).repeat(1, 4))
    expected = torch.tensor([[3.0, 0, 0], [0, 3, 1], [0, 1, 5]])
    torch.testing.assert_close(model.concept_layer.intervention_table[0], expected)
    activations = [torch.zeros(2, 3)] * 4
    values = torch.tensor([[1, MISSING, MISSING, MISSING], [MISSING] * 4])
    set_ = model.set_concepts(activations, activations, values)  # scalar states are the logits
    torch.testing.assert_close(set_[0], torch.stack([expected[1], torch.zeros(3)]))
    probs_model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=cebab_small.spec, concept_activation="probs"
    )
    assert torch.equal(probs_model.set_concepts(activations, activations, values)[0][0], torch.tensor([0.0, 1.0, 0.0]))


def test_label_heads_read_predicted_concepts_unless_random_interventions_are_asked(tiny_bert_dir, cebab_small):
    """docs/methods.md §1: sequential's c→y and joint's CE(y) read *predicted* concepts. RandInt (gold
    concepts mixed in while the label head trains) is an explicit option, off by default."""
    from dataclasses import replace

    from lucidlm.models.bottleneck import concept_loss, task_loss

    model = make(tiny_bert_dir, cebab_small, "sequential")
    assert model.config.random_intervention_rate == 0.0
    model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    head = model.label_head.weight.detach().clone()
    # c→y with the gold concepts scrambled: the same head, since it never reads them
    scrambled = replace(cebab_small.train, concepts=np.random.default_rng(0).permutation(cebab_small.train.concepts))
    fit_label_head(model, scrambled, cebab_small.dev, gold=False, config=model_config())
    assert torch.equal(model.label_head.weight, head)
    model.config.random_intervention_rate = 0.5  # asked for: gold concepts reach the head
    fit_label_head(model, scrambled, cebab_small.dev, gold=False, config=model_config())
    assert not torch.equal(model.label_head.weight, head)

    joint = make(tiny_bert_dir, cebab_small, "joint").eval()  # eval: no dropout, so one loss is exact
    batch = next(iter(joint.encoder.loader(cebab_small.train, 16)))
    out = joint(batch["input_ids"], batch["attention_mask"])
    plain = task_loss(joint.spec, out.label_logits, batch["labels"]) + concept_loss(
        out.concept_logits, batch["concepts"]
    )
    torch.testing.assert_close(joint.training_loss(joint, batch), plain)
    joint.config.random_intervention_rate = 1.0
    assert not torch.allclose(joint.training_loss(joint, batch), plain)
    with pytest.raises(LucidError, match=r"random_intervention_rate: expected a probability in \[0, 1\], found 1.5"):
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, random_intervention_rate=1.5)


def test_runs_saved_before_the_contract_still_load(tiny_bert_dir, cebab_small, tmp_path):
    """Runs written by lucidlm 0.1.0 before this layout: the concept heads at the model's top level,
    RandInt as ``intervention_rate``, the black box as ``family: bottleneck, mode: standard``."""
    import json

    from safetensors.torch import load_file, save_file

    def downgrade(run, family_options):
        meta = json.loads((run / "config.json").read_text())
        meta["family"], meta["model"] = family_options(meta["model"])
        (run / "config.json").write_text(json.dumps(meta))
        tensors = {
            name.replace("concept_layer.heads.", "concept_heads.").replace(
                "concept_layer.intervention_table", "intervention_table"
            ): t
            for name, t in load_file(str(run / "model.safetensors")).items()
        }
        save_file(tensors, str(run / "model.safetensors"))

    joint = make(tiny_bert_dir, cebab_small, "joint")
    joint.config.random_intervention_rate = 0.25
    joint.save_pretrained(tmp_path / "joint")
    downgrade(
        tmp_path / "joint",
        lambda m: (
            "bottleneck",
            {
                **{k: v for k, v in m.items() if k not in ("random_intervention_rate", "concept_layer")},
                "intervention_rate": 0.25,
            },
        ),
    )
    loaded = load_pretrained(tmp_path / "joint")
    assert loaded.config.random_intervention_rate == 0.25 and loaded.config.concept_layer == "scalar"
    assert loaded.predict(TEXT) == joint.predict(TEXT)
    assert torch.equal(loaded.concept_layer.intervention_table, joint.concept_layer.intervention_table)

    standard = make(tiny_bert_dir, cebab_small, "standard")
    standard.save_pretrained(tmp_path / "standard")
    downgrade(
        tmp_path / "standard",
        lambda m: (
            "bottleneck",
            {
                **m,
                "mode": "standard",
                "concept_loss_weight": 1.0,
                "concept_activation": "logits",
                "intervention_rate": 0.25,
            },
        ),
    )
    loaded = load_pretrained(tmp_path / "standard")
    assert isinstance(loaded, StandardLM) and loaded.predict(TEXT) == standard.predict(TEXT)


# ---- the concept-embedding layer (CEM) ----------------------------------------------------------


def test_concept_embeddings_mix_value_embeddings_by_probability(tiny_bert_dir, cebab_small):
    """ĉ_k = Σ_v p_kv·e_kv, p_k = softmax_v ψ(e_kv); the label head reads concat(ĉ_k); an
    intervention sets p_k to one-hot, so ĉ_k becomes the input's own embedding of the value."""
    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=cebab_small.spec, concept_layer="embedding", concept_embedding_size=4
    ).eval()
    assert model.config.random_intervention_rate == 0.25  # CEM's RandInt by default
    assert model.label_head.in_features == 4 * 4
    batch = model.encoder.batch([TEXT, "Bad."])
    out = model(batch["input_ids"], batch["attention_mask"])
    assert [tuple(e.shape) for e in out.concept_states] == [(2, 3, 4)] * 4
    layer = model.concept_layer
    for embeddings, logits in zip(out.concept_states, out.concept_logits):
        torch.testing.assert_close(logits, layer.score(embeddings)[..., 0])
    mixed = [(l.softmax(-1)[..., None] * e).sum(1) for l, e in zip(out.concept_logits, out.concept_states)]
    torch.testing.assert_close(out.label_logits, model.label_head(torch.cat(mixed, -1)))
    # set service (k = 2) of row 0 to Positive (index 1): ĉ_2 = e_2,Positive of that row
    values = torch.tensor([[MISSING, MISSING, 1, MISSING], [MISSING] * 4])
    after = model(batch["input_ids"], batch["attention_mask"], values).label_logits
    mixed[2] = torch.stack([out.concept_states[2][0, 1], mixed[2][1]])
    torch.testing.assert_close(after, model.label_head(torch.cat(mixed, -1)))
    result = model.intervene(TEXT, {"service": "Positive"})[0]
    assert result.after.concepts["service"].probabilities["Positive"] == 1.0  # confirmed or corrected: certain
    # explain: each concept's probability, and its contribution w·ĉ_k; they sum to the label's logit
    explanation = model.explain(TEXT, steps=4)
    row = model.spec.label_index(explanation.prediction.label)
    total = sum(c.contribution for c in explanation.concepts) + float(
        model.calibrated(model.label_head.bias)[row].detach()
    )
    assert total == pytest.approx(float(out.label_logits[0, row]), abs=1e-4)


def test_concept_embeddings_train_save_load_and_run_in_subnetworks(tiny_bert_dir, cebab_small, tmp_path):
    from lucidlm import SparseConceptLM

    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, concept_layer="embedding")
    model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    model.save_pretrained(tmp_path / "cem")
    loaded = load_pretrained(tmp_path / "cem")
    assert loaded.config.concept_layer == "embedding" and loaded.predict(TEXT) == model.predict(TEXT)
    a, b = model.evaluate(cebab_small.test), loaded.evaluate(cebab_small.test)
    assert a == b and a["concepts"]["accuracy"] > 0
    sparse = SparseConceptLM.from_backbone(
        str(tiny_bert_dir),
        task=cebab_small.spec,
        concept_layer="embedding",
        sparsity=0.5,
        pruning_start=0.5,
        pruning_end=1.0,
        pruning_interval=2,
        pruning_score="magnitude",
    ).eval()
    batch = sparse.encoder.batch([TEXT, "Bad."])
    with torch.no_grad():
        batched, _ = sparse.concept_states(batch["input_ids"], batch["attention_mask"])
        one_by_one, _ = sparse.concept_states_one_by_one(batch["input_ids"], batch["attention_mask"])
    for x, y in zip(batched, one_by_one):  # each concept's embeddings from its own subnetwork
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    with pytest.raises(
        LucidError, match="concept_layer: expected one of \\['scalar', 'embedding', 'statement'\\], found 'cem'"
    ):
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, concept_layer="cem")


def test_value_means_are_the_mean_embeddings_of_each_gold_value(tiny_bert_dir, cebab_small):
    """μ_kv = mean of e_kv(x) over the rows whose gold value is v (momentum 0), and a running
    estimate with momentum; a value no row has keeps its row."""
    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir),
        task=cebab_small.spec,
        concept_layer="embedding",
        concept_embedding_size=4,
        value_embedding="mean",
    ).eval()
    rows = cebab_small.train.select(range(24))
    batch = model.encoder.batch(rows.texts)
    with torch.no_grad():
        states = model(batch["input_ids"], batch["attention_mask"]).concept_states
    gold = torch.from_numpy(rows.concepts)
    layer = model.concept_layer
    layer.value_means.fill_(7.0)
    model.calibrate_interventions(states, gold)
    for k, embeddings in enumerate(states):
        for v in range(embeddings.shape[1]):
            chosen = gold[:, k] == v
            expected = embeddings[chosen, v].mean(0) if chosen.any() else torch.full((4,), 7.0)
            torch.testing.assert_close(layer.value_means[k, v], expected)
    before = layer.value_means.clone()
    model.calibrate_interventions([s * 2 for s in states], gold, momentum=0.9)
    seen = torch.stack(
        [torch.bincount(gold[:, k][gold[:, k] >= 0], minlength=before.shape[1]) > 0 for k in range(gold.shape[1])]
    )
    torch.testing.assert_close(layer.value_means[seen], 0.9 * before[seen] + 0.1 * 2 * before[seen])


@pytest.mark.parametrize("value_embedding", ["input", "mean", "learned"])
def test_a_value_embedding_that_does_not_depend_on_the_text_is_what_every_text_reads_when_set(
    value_embedding, tiny_bert_dir, cebab_small, tmp_path
):
    """Set to a value, concept k reads the input's embedding of it (input: differs by text), or
    the value's mean or learned vector (the same for every text); learned vectors train through
    RandInt's interventions; the model saves and loads with the same corrected predictions."""
    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir),
        task=cebab_small.spec,
        concept_layer="embedding",
        concept_embedding_size=4,
        value_embedding=value_embedding,
        seed=1,
    )
    start = model.concept_layer.value_vectors.detach().clone() if value_embedding == "learned" else None
    model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    assert model.summary()["value_embedding"] == value_embedding
    batch = model.encoder.batch([TEXT, "The waiter was rude and the soup cold."])
    values = torch.tensor([[MISSING, MISSING, 1, MISSING]] * 2)
    with torch.no_grad():
        states = model(batch["input_ids"], batch["attention_mask"]).concept_states
        service = model.intervened_activations(states, values, correct_only=False)[2]
    same = torch.allclose(service[0], service[1])
    assert same == (value_embedding != "input")
    if value_embedding != "input":
        torch.testing.assert_close(service[0], model.concept_layer.value_table(2)[1])
    if value_embedding == "learned":  # RandInt set concepts in training: their vectors moved
        assert not torch.allclose(model.concept_layer.value_vectors, start)
    else:  # the value means, from the training set's gold values after training
        assert model.concept_layer.value_means.abs().sum() > 0
    model.save_pretrained(tmp_path / "m")
    loaded = load_pretrained(tmp_path / "m")
    assert loaded.config.value_embedding == value_embedding
    assert loaded.intervene(TEXT, {"service": "Negative"}) == model.intervene(TEXT, {"service": "Negative"})
    with pytest.raises(
        LucidError, match="value_embedding: 'mean' is what the embedding layer's corrected concept reads"
    ):
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, value_embedding="mean")
    with pytest.raises(LucidError, match="value_embedding: expected one of \\['input', 'mean', 'learned'\\]"):
        ConceptBottleneckLM.from_backbone(
            str(tiny_bert_dir), task=cebab_small.spec, concept_layer="embedding", value_embedding="typical"
        )


@pytest.mark.parametrize("layer", ["scalar", "embedding"])
def test_a_contribution_splits_into_what_the_value_and_what_the_text_carries(
    layer, tiny_bert_dir, cebab_small, tmp_path
):
    """from_value = the label-head weights × the value table's rows mixed by the concept's
    probabilities (scalar: forced logits; embedding: value means); from_text the rest; the
    values' share is Σ|value| / Σ(|value| + |text|). A checkpoint without value means loads with
    the split unknown."""
    from safetensors.torch import load_file, save_file

    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, concept_layer=layer, seed=3)
    model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    explanation = model.explain(TEXT, steps=2)
    with torch.no_grad():
        out = model.forward_texts([TEXT])
    row = model.spec.label_index(explanation.prediction.label)
    sizes = [a.shape[-1] for a in model.concept_activations(out.concept_states)]
    weights = model.label_head.weight[row].detach().split(sizes)
    values, texts = [], []
    for k, (c, w) in enumerate(zip(explanation.concepts, weights)):
        probs = out.concept_logits[k][0].softmax(-1)
        v = len(model.spec.concepts[k].values)
        table = (
            model.concept_layer.intervention_table[k, :v, :v]
            if layer == "scalar"
            else model.concept_layer.value_means[k, :v]
        )
        expected = float(model.calibrated((w * (probs @ table)).sum()))
        assert c.from_value == pytest.approx(expected, abs=1e-5)
        assert c.from_value + c.from_text == pytest.approx(c.contribution, abs=1e-6)
        values.append(abs(c.from_value))
        texts.append(abs(c.from_text))
    assert explanation.concept_values_share == pytest.approx(sum(values) / (sum(values) + sum(texts)))
    assert 0.0 < explanation.concept_values_share < 1.0
    model.save_pretrained(tmp_path / "m")
    if layer == "embedding":
        tensors = {
            n: t
            for n, t in load_file(str(tmp_path / "m" / "model.safetensors")).items()
            if n != "concept_layer.value_means"
        }
        save_file(tensors, str(tmp_path / "m" / "model.safetensors"))
        old = load_pretrained(tmp_path / "m").explain(TEXT, steps=2)
        assert old.concept_values_share is None and all(c.from_value is None for c in old.concepts)
        assert [c.contribution for c in old.concepts] == pytest.approx([c.contribution for c in explanation.concepts])
    # probabilities as activations: the label reads nothing but the values
    probs = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=cebab_small.spec, concept_activation="probs", seed=3
    )
    assert probs.explain(TEXT, steps=2).concept_values_share == pytest.approx(1.0)


def test_intervention_aware_training_adds_the_loss_after_corrections(tiny_bert_dir, cebab_small):
    """IntCEM's idea: loss + λ·T/K·CE(y | the policy's first T concepts set to gold), T ~ U{1..K}."""
    from lucidlm.intervene import uncertainty_order
    from lucidlm.models.losses import concept_loss, task_loss

    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir),
        task=cebab_small.spec,
        concept_layer="embedding",
        random_intervention_rate=0.0,
        intervention_loss_weight=2.0,
    ).eval()
    batch = next(iter(model.encoder.loader(cebab_small.train, 16)))
    torch.manual_seed(7)
    loss = model.training_loss(model, batch)
    out = model(batch["input_ids"], batch["attention_mask"])
    plain = task_loss(model.spec, out.label_logits, batch["labels"]) + concept_loss(
        out.concept_logits, batch["concepts"]
    )
    torch.manual_seed(7)
    t = int(torch.randint(1, 5, ()))
    order = uncertainty_order([l.softmax(-1).detach().numpy() for l in out.concept_logits])
    values = torch.full_like(batch["concepts"], MISSING)
    rows = torch.arange(16)[:, None]
    values[rows, torch.from_numpy(order[:, :t])] = batch["concepts"][rows, torch.from_numpy(order[:, :t])]
    after = model.intervened_label_logits(out.concept_states, values, correct_only=False)
    torch.testing.assert_close(loss, plain + 2.0 * (t / 4) * task_loss(model.spec, after, batch["labels"]))
    with pytest.raises(LucidError, match="intervention_policy: expected one of"):
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, intervention_policy="oracle")


def test_cebab_counterfactual_edits_are_edits_of_the_training_texts(cebab_dir):
    """``counterfactuals: train_inclusive``: every edit starts from a training row and changed
    exactly the one concept it names to the value it names; selecting rows keeps their edits."""
    from lucidlm import load_task
    from lucidlm.data.cebab import load_cebab_pairs

    task = load_task("cebab", path=cebab_dir, counterfactuals="train_inclusive")
    train, edits = task.train, task.train.counterfactuals
    assert len(edits) > 2 * len(train) and len(set(edits.sources.tolist())) > 0.95 * len(train)
    by_texts = {(p.original, p.edit): p for p in load_cebab_pairs(cebab_dir, "train_inclusive", protocol="all")}
    for i in range(0, len(edits), 97):
        pair, concept = by_texts[train.texts[edits.sources[i]], edits.texts[i]], task.spec.concepts[edits.concepts[i]]
        assert (pair.aspect, pair.after) == (concept.name, concept.values[edits.values[i]])
        assert train.concepts[edits.sources[i], edits.concepts[i]] != edits.values[i]  # a change
    sample, known = train.sample(50, seed=3), {(train.texts[s], t) for s, t in zip(edits.sources, edits.texts)}
    kept = sample.counterfactuals
    assert len(kept) == sum(train.ids[s] in set(sample.ids) for s in edits.sources)
    assert all((sample.texts[s], t) in known for s, t in zip(kept.sources, kept.texts))
    with pytest.raises(LucidError, match="'test' is an evaluation split"):
        load_task("cebab", path=cebab_dir, counterfactuals="test")


def test_counterfactual_training_matches_the_intervention_to_the_edit(tiny_bert_dir, cebab_dir):
    """The loss is KL(N(edit) ‖ N(original with k := b)) on pairs drawn from torch's generator;
    training with it brings the model's intervention closer to its output on the edits."""
    from lucidlm import load_task
    from lucidlm.models.losses import concept_loss, task_loss

    task = load_task("cebab", path=cebab_dir, counterfactuals="train_inclusive")
    train = task.train.sample(96)
    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=task.spec, counterfactual_loss_weight=2.0, counterfactual_batch_size=4
    ).eval()
    model.before_training(train, None)
    batch = next(iter(model.encoder.loader(train, 16)))
    torch.manual_seed(5)
    loss = model.training_loss(model, batch)
    out = model(batch["input_ids"], batch["attention_mask"])
    plain = task_loss(model.spec, out.label_logits, batch["labels"]) + concept_loss(
        out.concept_logits, batch["concepts"]
    )
    torch.manual_seed(5)
    picked = torch.randint(len(train.counterfactuals), (4,)).tolist()
    edits = train.counterfactuals

    def kl(rows):
        original = model.forward_texts([train.texts[edits.sources[i]] for i in rows])
        values = torch.full((len(rows), 4), MISSING)
        values[torch.arange(len(rows)), torch.as_tensor(edits.concepts[rows])] = torch.as_tensor(edits.values[rows])
        after = model.intervened_label_logits(original.concept_states, values, correct_only=False).log_softmax(-1)
        target = model.forward_texts([edits.texts[i] for i in rows]).label_logits.log_softmax(-1)
        return float((target.exp() * (target - after)).sum(-1).mean())

    torch.testing.assert_close(loss.item(), plain.item() + 2.0 * kl(picked), atol=1e-4, rtol=1e-4)
    everything = list(range(len(edits)))
    trained = {}
    for weight in (0.0, 5.0):
        model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=task.spec, counterfactual_loss_weight=weight)
        model.fit(train, **{**FAST, "epochs": 3})
        trained[weight] = kl(everything)
    assert trained[5.0] < 0.8 * trained[0.0]
    with pytest.raises(LucidError, match="counterfactual_loss_weight needs human edits"):
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=task.spec, counterfactual_loss_weight=1.0).fit(
            load_task("cebab", path=cebab_dir).train.sample(32), **FAST
        )
    with pytest.raises(LucidError, match="in joint mode only"):
        ConceptBottleneckLM.from_backbone(
            str(tiny_bert_dir), task=task.spec, mode="sequential", counterfactual_loss_weight=1.0
        )


def test_counterfactual_label_loss_is_the_corrected_originals_cross_entropy_to_the_edits_gold_label(
    tiny_bert_dir, cebab_dir
):
    """counterfactual_label_weight × CE(original with k := b, the edit's own majority label) on the
    same drawn pairs, those without a majority left out; the edit's label is its CEBaB row's."""
    import json

    from lucidlm import load_task
    from lucidlm.models.losses import concept_loss, task_loss

    task = load_task("cebab", path=cebab_dir, counterfactuals="train_inclusive")
    train = task.train.sample(96)
    edits = train.counterfactuals
    rows = {
        r["description"]: r["review_majority"]
        for r in json.loads((Path(cebab_dir) / "train_inclusive.json").read_text())
    }
    for text, label in zip(edits.texts[:20], edits.labels[:20]):
        assert (task.spec.classes[label] if label != MISSING else "no majority") == rows[text]
    assert (edits.labels == MISSING).any() and (edits.labels != MISSING).any()
    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=task.spec, counterfactual_label_weight=3.0, counterfactual_batch_size=8
    ).eval()
    model.before_training(train, None)
    batch = next(iter(model.encoder.loader(train, 16)))
    torch.manual_seed(2)
    loss = model.training_loss(model, batch)
    out = model(batch["input_ids"], batch["attention_mask"])
    plain = task_loss(model.spec, out.label_logits, batch["labels"]) + concept_loss(
        out.concept_logits, batch["concepts"]
    )
    torch.manual_seed(2)
    picked = [i for i in torch.randint(len(edits), (8,)).tolist() if edits.labels[i] != MISSING]
    original = model.forward_texts([train.texts[edits.sources[i]] for i in picked])
    values = torch.full((len(picked), 4), MISSING)
    values[torch.arange(len(picked)), torch.as_tensor(edits.concepts[picked])] = torch.as_tensor(edits.values[picked])
    after = model.intervened_label_logits(original.concept_states, values, correct_only=False)
    ce = torch.nn.functional.cross_entropy(after, torch.as_tensor(edits.labels[picked]))
    torch.testing.assert_close(loss.item(), plain.item() + 3.0 * ce.item(), atol=1e-4, rtol=1e-4)
    assert model.summary()["counterfactual_label_weight"] == 3.0


def test_the_side_channel_penalty_is_the_squared_text_part_and_training_with_it_shrinks_that_part(
    tiny_bert_dir, cebab_small
):
    """side_channel_penalty × mean_{rows, labels c} Σ_k (w_c,k·(ĉ_k − Σ_v p_kv·μ_kv))² is added to
    the joint loss; trained with it, what the label reads of the text beside the values on new
    rows shrinks (whether the values then carry more of the decisions is measured on CEBaB,
    bench/correctable.py: a tiny model's embeddings can shrink as a whole)."""
    from lucidlm.models.losses import concept_loss, task_loss

    options = dict(concept_layer="embedding", concept_embedding_size=4, random_intervention_rate=0.0, seed=4)
    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=cebab_small.spec, side_channel_penalty=2.0, **options
    ).eval()
    batch = next(iter(model.encoder.loader(cebab_small.train, 16)))
    model.concept_layer.value_means.normal_(generator=torch.Generator().manual_seed(0))
    loss = model.training_loss(model, batch)
    out = model(batch["input_ids"], batch["attention_mask"])
    plain = task_loss(model.spec, out.label_logits, batch["labels"]) + concept_loss(
        out.concept_logits, batch["concepts"]
    )
    squares = 0.0
    for k, (embeddings, logits) in enumerate(zip(out.concept_states, out.concept_logits)):
        p = logits.softmax(-1)
        mixed = (p.unsqueeze(-1) * embeddings).sum(1)
        reading = p @ model.concept_layer.value_means[k, : p.shape[1]]
        squares = squares + ((mixed - reading) @ model.label_head.weight[:, 4 * k : 4 * (k + 1)].T).pow(2)  # [B, C]
    by_hand = squares.mean()
    torch.testing.assert_close(loss.item(), (plain + 2.0 * by_hand).item(), atol=1e-5, rtol=1e-5)
    side = {}
    for weight in (0.0, 20.0):
        trained = ConceptBottleneckLM.from_backbone(
            str(tiny_bert_dir),
            task=cebab_small.spec,
            side_channel_penalty=weight,
            **{**options, "random_intervention_rate": 0.25},
        )
        trained.fit(cebab_small.train, eval_data=cebab_small.dev, **{**FAST, "epochs": 2})
        with torch.no_grad():
            side[weight] = float(side_channel(trained, trained.forward_texts(cebab_small.test.texts).concept_states))
    assert side[20.0] < 0.6 * side[0.0]
    with pytest.raises(LucidError, match="side_channel_penalty: penalises what the jointly trained label reads"):
        ConceptBottleneckLM.from_backbone(
            str(tiny_bert_dir), task=cebab_small.spec, mode="sequential", side_channel_penalty=1.0
        )


def test_intervention_holdout_trains_on_the_rest_and_tunes_only_the_label_head_on_the_held_out_rows(
    tiny_bert_dir, cebab_small
):
    options = dict(concept_layer="embedding", concept_embedding_size=4, intervention_loss_weight=1.0)
    held = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=cebab_small.spec, intervention_holdout=0.25, **options
    )
    trained_rows = held.training_rows(cebab_small.train, TrainingConfig(seed=0))
    held_out = held._held_out
    assert (len(trained_rows), len(held_out)) == (72, 24)
    assert sorted(trained_rows.texts + held_out.texts) == sorted(cebab_small.train.texts)
    held.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    # the joint stage saw the 72 rows only: the same model trained on them alone, before its head is tuned
    plain = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, **options)
    plain.fit(trained_rows, eval_data=cebab_small.dev, **FAST)
    tuned = {n for n, p in held.state_dict().items() if not torch.equal(p, plain.state_dict()[n])}
    stage = held.training_history[-1]
    assert stage["stage"] == "held-out label head" and stage["rows"] == 24
    assert tuned <= {"label_head.weight", "label_head.bias"} and (tuned != set()) == (stage["best_epoch"] > 0)
    assert stage["dev_score"] >= plain.dev_score(cebab_small.dev) - 1e-9  # epoch 0, the joint head, is a candidate
    assert "label head tuned on 25% of the training rows" in overview(held, None, Path("run"))  # the report says so
    with pytest.raises(
        LucidError, match="intervention_holdout: tunes the jointly trained label head; mode is 'sequential'"
    ):
        ConceptBottleneckLM.from_backbone(
            str(tiny_bert_dir), task=cebab_small.spec, mode="sequential", intervention_holdout=0.2
        )
    with pytest.raises(LucidError, match=r"intervention_holdout: expected a share in \[0, 1\), found 1.0"):
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, intervention_holdout=1.0)
    with pytest.raises(LucidError, match="would undo the elastic net's sparsity"):
        ConceptBottleneckLM.from_backbone(
            str(tiny_bert_dir), task=cebab_small.spec, intervention_holdout=0.2, label_penalty="elastic"
        )
    # without dev the tuning runs its epochs and keeps the last
    blind = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=cebab_small.spec, intervention_holdout=0.25, **options
    )
    blind.fit(cebab_small.train, **FAST)
    assert blind.training_history[-1]["best_epoch"] == 30 and blind.training_history[-1]["dev_score"] is None


def test_concept_level_mixup_mixes_pooled_vectors_and_both_losses(tiny_bert_dir, cebab_small):
    """C3M's mixup: h = μ·h_i + (1 − μ)·h_π(i), loss = μ·L(i) + (1 − μ)·L(π(i)), μ ~ Beta(α, α)."""
    from lucidlm.models.losses import Mixup, concept_loss, task_loss

    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir),
        task=cebab_small.spec,
        concept_layer="embedding",
        random_intervention_rate=0.0,
        mixup_alpha=0.4,
    ).eval()
    batch = next(iter(model.encoder.loader(cebab_small.train, 16)))
    torch.manual_seed(5)
    loss = model.training_loss(model, batch)
    torch.manual_seed(5)
    mix = Mixup.draw(0.4, 16, "cpu")
    assert 0.0 < mix.share < 1.0 and sorted(mix.partner.tolist()) == list(range(16))
    out = model(batch["input_ids"], batch["attention_mask"], None, mix)
    plain = model(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(out.pooled, mix.share * plain.pooled + (1 - mix.share) * plain.pooled[mix.partner])

    def joint(labels, concepts):
        return task_loss(model.spec, out.label_logits, labels) + concept_loss(out.concept_logits, concepts)

    p = mix.partner
    expected = mix.share * joint(batch["labels"], batch["concepts"]) + (1 - mix.share) * joint(
        batch["labels"][p], batch["concepts"][p]
    )
    torch.testing.assert_close(loss, expected)
    # SparseCBM's pooled vectors are [K, B, H]: rows mix along the batch dimension
    stacked = torch.randn(3, 16, 8)
    torch.testing.assert_close(Mixup.apply(mix, stacked)[2], Mixup.apply(mix, stacked[2]))
    # an intervention on a mixed row may set a concept only to the value both of its rows have
    gold = torch.tensor([[0, 1], [0, 2]])
    swap = Mixup(0.5, torch.tensor([1, 0]))
    assert Mixup.agreed(swap, gold).tolist() == [[0, MISSING], [0, MISSING]]
    state = torch.get_rng_state()
    assert Mixup.draw(0.0, 16, "cpu") is None and torch.equal(torch.get_rng_state(), state)  # off: draws nothing
    assert "μ ~ Beta(0.4, 0.4)" in overview(model, None, Path("run"))  # the report says so
    with pytest.raises(LucidError, match="mixup_alpha: expected a Beta parameter >= 0"):
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, mixup_alpha=-0.4)
    with pytest.raises(
        LucidError, match="mixup_alpha: mixes the joint loss's rows, in joint mode only; mode is 'sequential'"
    ):
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, mode="sequential", mixup_alpha=0.4)


def test_intervention_aware_training_with_mixup_sets_the_concepts_both_rows_agree_on_first(
    tiny_bert_dir, cebab_small, monkeypatch
):
    """On a mixed row the policy's most uncertain concepts are mostly those where its two rows
    disagree, which have no gold value: the agreed ones are set first, up to T of them."""
    from lucidlm.models.losses import Mixup

    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir),
        task=cebab_small.spec,
        concept_layer="embedding",
        random_intervention_rate=0.0,
        intervention_loss_weight=1.0,
    ).eval()
    batch = next(iter(model.encoder.loader(cebab_small.train, 16)))
    mix = Mixup(0.5, torch.arange(16).roll(1))
    agreed = Mixup.agreed(mix, batch["concepts"]) != MISSING
    assert (agreed.sum(1) < 4).any()  # some rows disagree somewhere
    seen = []
    original = model.intervened_label_logits
    monkeypatch.setattr(
        model,
        "intervened_label_logits",
        lambda states, values, **kw: seen.append(values) or original(states, values, **kw),
    )
    for seed in range(4):
        torch.manual_seed(seed)
        out = model(batch["input_ids"], batch["attention_mask"], None, mix)
        intervention_aware_loss(model, out.concept_states, batch, mix)
        set_here = seen[-1] != MISSING
        assert not (set_here & ~agreed).any()  # never a concept without a gold value
        counts, available = set_here.sum(1), agreed.sum(1)
        t = int(counts.max())
        assert torch.equal(counts, available.clamp(max=t))  # up to T per row, as many as it has
