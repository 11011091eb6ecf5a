"""Mechanics of proto-lm (docs/methods.md §3) on tiny random BERT and GPT-2 backbones."""

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from lucidlm import LucidError, PrototypeLM, Split, TaskSpec, load_pretrained
from lucidlm.cli import app
from lucidlm.models.prototypes import cohesion_loss, separation_loss

FAST = dict(epochs=1, batch_size=16, progress=False)
TEXT = "Great pasta, but we waited an hour and the room was loud."
PER_CLASS = 4  # CEBaB's five classes: 20 prototypes


def make(backbone_dir, spec, seed=0, **config):
    return PrototypeLM.from_backbone(
        str(backbone_dir), task=spec, seed=seed, **{"prototypes_per_class": PER_CLASS, **config}
    )


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, cebab_small):
    """A tiny model trained for one epoch, then hard-projected (dev metrics before and after)."""
    model = make(tiny_bert_dir, cebab_small.spec, projection="hard", nearest_examples=3)
    return model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)


def alone(model, split: Split) -> torch.Tensor:
    """S of every row, each row run by itself (no padding at all): the brute-force reference."""
    return torch.from_numpy(model.infer(split, batch_size=1)["pooled"]).double()


# ---- forward ------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_gpt2_dir"])
def test_forward_shapes_and_attention_is_a_distribution_over_real_tokens(fixture, cebab_small, request):
    model = make(request.getfixturevalue(fixture), cebab_small.spec).eval()
    batch = model.encoder.batch([TEXT, "Bad.", "Fine food."])
    out = model(batch["input_ids"], batch["attention_mask"])
    tokens = batch["input_ids"].shape[1]
    assert out.label_logits.shape == (3, 5) and out.concept_logits == ()
    assert out.pooled.shape == (3, 32) and model.prototypes.shape == (20, 32)
    assert out.prototype_distances.shape == out.prototype_similarity.shape == (3, 20)
    assert out.token_attention.shape == (3, tokens)
    torch.testing.assert_close(out.token_attention.sum(-1), torch.ones(3))
    assert (out.token_attention[batch["attention_mask"] == 0] == 0).all()
    # the similarity is 1 / (‖S − p‖ + ε), with the exact Euclidean distance
    exact = torch.cdist(out.pooled.double(), model.prototypes.double(), compute_mode="donot_use_mm_for_euclid_dist")
    torch.testing.assert_close(out.prototype_distances.double(), exact, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.prototype_similarity, 1 / (out.prototype_distances + model.config.epsilon))


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_gpt2_dir"])
def test_padding_does_not_change_a_text(fixture, cebab_small, request):
    """A text batched with longer texts (so padded) gets the same attention, S and logits."""
    model = make(request.getfixturevalue(fixture), cebab_small.spec).eval()
    with torch.no_grad():
        by_itself = model.forward_texts(["Bad."])
        padded = model.forward_texts(["Bad.", TEXT, TEXT + " " + TEXT])
    length = by_itself.token_attention.shape[1]
    assert padded.token_attention.shape[1] > length + 10
    torch.testing.assert_close(padded.pooled[0], by_itself.pooled[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded.token_attention[0, :length], by_itself.token_attention[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(padded.label_logits[0], by_itself.label_logits[0], atol=1e-5, rtol=1e-5)


def test_label_head_starts_at_plus_one_own_minus_half_others(tiny_bert_dir, cebab_small):
    model = make(tiny_bert_dir, cebab_small.spec)
    assert model.prototype_class.tolist() == [c for c in range(5) for _ in range(PER_CLASS)]
    expected = torch.full((5, 20), -0.5)
    for c in range(5):
        expected[c, c * PER_CLASS : (c + 1) * PER_CLASS] = 1.0
    assert torch.equal(model.label_head.weight, expected)
    assert torch.equal(model.label_head.bias, torch.zeros(5))


def test_prototypes_start_at_training_examples_of_their_class(tiny_bert_dir, cebab_small):
    model = make(tiny_bert_dir, cebab_small.spec)
    train = cebab_small.train.sample(48, seed=1)
    model.initialize_from_data(train, seed=5)
    pooled = alone(model, train)
    distances = torch.cdist(model.prototypes.detach().double(), pooled)
    nearest = distances.argmin(1)
    assert (torch.from_numpy(train.labels)[nearest] == model.prototype_class).all()  # an example of its own class ...
    class_sizes = np.bincount(train.labels, minlength=5)[model.prototype_class.numpy()]
    plenty = torch.from_numpy(class_sizes >= PER_CLASS)
    assert 0 < plenty.sum() < 20  # this subset has classes with too few examples, and classes with enough
    assert distances.min(1).values[plenty].max() < 1e-4  # ... exactly its S where the class has enough examples,
    assert distances.min(1).values[~plenty].max() < 0.1  # ... its S jittered where one example serves twice
    assert len(torch.unique(model.prototypes.detach(), dim=0)) == 20
    first = model.prototypes.detach().clone()
    model.initialize_from_data(train, seed=5)
    assert torch.equal(model.prototypes, first)
    model.initialize_from_data(train, seed=6)
    assert not torch.equal(model.prototypes, first)


# ---- cohesion and separation ----------------------------------------------------------------
def test_cohesion_and_separation_choose_the_right_prototypes():
    distances = torch.tensor([[1.0, 2.0, 4.0, 3.0, 5.0, 0.5]])  # prototypes of classes 0, 0, 0, 1, 1, 1
    own = torch.tensor([[True, True, True, False, False, False]])
    # cohesion: the 2 *least* similar own-class prototypes are the farthest (4 and 2)
    assert cohesion_loss(distances, own, 2).item() == pytest.approx(3.0)
    # separation: the 2 *most* similar other-class prototypes are the nearest (0.5 and 3)
    assert separation_loss(distances, own, 2, 1e-4).item() == pytest.approx((1 / 0.5001 + 1 / 3.0001) / 2)


def _own_and_other_distances(model, batch):
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"])
    own = model.own_prototypes(batch["labels"])
    d = out.prototype_distances
    return d[own].mean().item(), d[~own].mean().item(), d


@pytest.mark.parametrize("term", ["cohesion", "separation"])
def test_cohesion_pulls_toward_own_class_and_separation_pushes_away_from_others(term, tiny_bert_dir, cebab_small):
    """A few gradient steps on one term alone move distances the way docs/methods.md §3 intends (the
    released code's signs did the opposite)."""
    model = make(tiny_bert_dir, cebab_small.spec, dropout=0.0)
    model.initialize_from_data(cebab_small.train)
    batch = next(iter(model.encoder.loader(cebab_small.train, 16)))
    own_before, other_before, d_before = _own_and_other_distances(model, batch)
    # Adam's small even steps: plain SGD with a step large enough to matter throws a random
    # tiny backbone around. Eval mode: no dropout noise between the before and after.
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.eval()
    k = model.cohesion_separation_k
    for _ in range(5):
        out = model(batch["input_ids"], batch["attention_mask"])
        own = model.own_prototypes(batch["labels"])
        if term == "cohesion":
            loss = cohesion_loss(out.prototype_distances, own, k)
        else:
            loss = separation_loss(out.prototype_distances, own, k, model.config.epsilon)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    own_after, other_after, d_after = _own_and_other_distances(model, batch)
    own_mask = model.own_prototypes(batch["labels"])
    if term == "cohesion":
        farthest_own = lambda d: d.masked_fill(~own_mask, -1).topk(k, 1).values.mean().item()  # noqa: E731
        assert farthest_own(d_after) < 0.9 * farthest_own(d_before)
        assert own_after < own_before
    else:
        nearest_other = lambda d: d.masked_fill(own_mask, 1e9).topk(k, 1, largest=False).values.mean().item()  # noqa: E731
        assert nearest_other(d_after) > nearest_other(d_before)
        assert other_after > other_before


def test_loss_is_the_weighted_sum_of_its_terms(tiny_bert_dir, cebab_small):
    model = make(
        tiny_bert_dir, cebab_small.spec, task_loss_weight=0.7, cohesion_weight=0.3, separation_weight=2.0
    ).eval()
    model.initialize_from_data(cebab_small.train)
    batch = next(iter(model.encoder.loader(cebab_small.train, 16)))
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"])
        own, k = model.own_prototypes(batch["labels"]), model.cohesion_separation_k
        expected = (
            0.7 * torch.nn.functional.cross_entropy(out.label_logits, batch["labels"])
            + 0.3 * cohesion_loss(out.prototype_distances, own, k)
            + 2.0 * separation_loss(out.prototype_distances, own, k, model.config.epsilon)
        )
        assert model.loss(out, batch["labels"]).item() == pytest.approx(expected.item())
    assert k == 2  # K = ratio (0.5) × P/C (4)


# ---- projection ---------------------------------------------------------------------------
def test_projection_finds_the_true_nearest_examples(tiny_bert_dir, cebab_small):
    model = make(tiny_bert_dir, cebab_small.spec)
    train = cebab_small.train.sample(48, seed=1)
    model.initialize_from_data(train)
    with torch.no_grad():  # move the prototypes off the examples they started at
        model.prototypes.add_(0.3 * torch.randn(model.prototypes.shape, generator=torch.Generator().manual_seed(1)))
    projection = model.project(train, n_nearest=4, batch_size=7)  # batches that cut across classes
    distances = torch.cdist(model.prototypes.detach().double(), alone(model, train))  # [P, N]
    labels = torch.from_numpy(train.labels)
    attended = model.most_attended_tokens(train, batch_size=1)
    for j, found in enumerate(projection.examples):
        own = (labels == model.prototype_class[j]).nonzero().flatten()
        order = own[distances[j, own].argsort()][:4].tolist()  # fewer where the class has fewer examples
        assert [e.text for e in found] == [train.texts[i] for i in order], j
        np.testing.assert_allclose([e.distance for e in found], distances[j, order].numpy(), rtol=1e-4, atol=1e-4)
        assert [e.label for e in found] == [model.prototype_class_name(j)] * len(order)
        assert [e.top_tokens for e in found] == [attended[i] for i in order]
    assert {len(found) for found in projection.examples} == {3, 4}  # this subset has a class of 3
    assert not projection.hard and projection.own_class
    assert all(len(tokens) == 3 and "[CLS]" not in tokens and "[SEP]" not in tokens for tokens in attended)


def test_hard_projection_puts_each_prototype_on_its_nearest_training_embedding(trained, cebab_small):
    projection = trained.projection
    assert projection.hard
    pooled = alone(trained, cebab_small.train)
    texts = cebab_small.train.texts
    for j, examples in enumerate(projection.examples):
        nearest = pooled[texts.index(examples[0].text)]
        torch.testing.assert_close(trained.prototypes[j].double(), nearest, atol=1e-5, rtol=1e-5)
        assert examples[0].distance < 1e-2 and examples[0].label == trained.prototype_class_name(j)
    assert set(projection.metrics_before) == set(projection.metrics_after) == {"n", "task", "calibration"}
    # "after" is the model as it is, before the temperature fitted after training (argmax unchanged)
    now = trained.evaluate(cebab_small.dev)
    assert {k: projection.metrics_after["task"][k] for k in ("accuracy", "macro_f1")} == {
        k: now["task"][k] for k in ("accuracy", "macro_f1")
    }
    assert trained.training_history[-1]["stage"] == "projection" and trained.training_history[-1]["hard"]


# ---- persistence and repeatability ---------------------------------------------------------
def test_save_load_round_trip_predicts_and_explains_identically(trained, cebab_small, tmp_path):
    trained.save_pretrained(tmp_path / "run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["backbone", "config.json", "model.safetensors"]
    loaded = load_pretrained(tmp_path / "run")
    assert isinstance(loaded, PrototypeLM) and loaded.config == trained.config and loaded.spec == trained.spec
    assert loaded.projection == trained.projection and loaded.training_history == trained.training_history
    a, b = trained.infer(cebab_small.test), loaded.infer(cebab_small.test)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert loaded.explain(TEXT).to_dict() == trained.explain(TEXT).to_dict()


def test_same_seed_same_result(tiny_bert_dir, cebab_small):
    train, dev = cebab_small.train.sample(64, seed=2), cebab_small.dev.sample(24, seed=2)
    first, same = (
        make(tiny_bert_dir, cebab_small.spec, seed=3).fit(
            train, eval_data=dev, seed=3, epochs=2, batch_size=16, progress=False
        )
        for _ in range(2)
    )
    for k, v in first.state_dict().items():
        assert torch.equal(v, same.state_dict()[k]), k
    assert first.projection == same.projection and first.training_history == same.training_history
    starts = [make(tiny_bert_dir, cebab_small.spec, seed=seed) for seed in (3, 4)]
    for model, seed in zip(starts, (3, 4)):
        model.initialize_from_data(cebab_small.train, seed=seed)
    assert not torch.equal(starts[0].prototypes, starts[1].prototypes)
    assert not torch.equal(starts[0].token_attention.context, starts[1].token_attention.context)


# ---- other kinds of task ------------------------------------------------------------------
def test_regression(tiny_bert_dir, cebab_small):
    """One group of prototypes, a zero-initialised Linear(P -> 1), MSE + cohesion and no separation."""
    spec = TaskSpec(text="description", label="stars", name="stars")

    def as_stars(s):
        return Split(s.texts, s.labels.astype(np.float32) + 1, np.zeros((len(s), 0), np.int64), source="stars")

    train, dev = as_stars(cebab_small.train), as_stars(cebab_small.dev)
    model = make(tiny_bert_dir, spec, prototypes_per_class=6, separation_weight=5.0)
    assert model.prototypes.shape == (6, 32) and model.cohesion_separation_k == 3
    assert torch.equal(model.label_head.weight, torch.zeros(1, 6))
    model.initialize_from_data(train)
    batch = next(iter(model.encoder.loader(train, 16)))
    with torch.no_grad():
        out = model.eval()(batch["input_ids"], batch["attention_mask"])
        expected = (
            torch.nn.functional.mse_loss(out.label_logits[:, 0], batch["labels"])
            + model.config.cohesion_weight * out.prototype_distances.topk(3, 1).values.mean()
        )
        assert model.loss(out, batch["labels"]).item() == pytest.approx(expected.item())  # no separation term
    model.fit(train, eval_data=dev, warm_start=True, **FAST)
    metrics = model.evaluate(dev)
    assert set(metrics["task"]) == {"mse", "pearson"}
    assert metrics["task"]["mse"] < np.mean((dev.labels - train.labels.mean()) ** 2) + 0.5  # near or below the mean's
    assert not model.projection.own_class  # nearest examples of any target value
    explanation = model.explain(TEXT, top_k=2)
    assert isinstance(explanation.prediction.label, float) and explanation.prediction.probabilities == {}
    assert [m.prototype_class for m in explanation.prototypes] == [None, None]
    assert set(explanation.prototypes[0].contributions) == {"stars"}


def test_sentence_pairs(tiny_bert_dir, cebab_small):
    spec = TaskSpec(text="premise", label="label", classes=("same", "different"), text_pair="hypothesis", name="pairs")
    texts = cebab_small.train.texts[:48]
    pairs = texts[1:] + texts[:1]
    labels = np.arange(48) % 2
    train = Split(
        texts,
        labels,
        np.zeros((48, 0), np.int64),
        text_pairs=[t if y == 0 else p for t, p, y in zip(texts, pairs, labels)],
    )
    model = make(tiny_bert_dir, spec).fit(train, **FAST)
    out = model.forward_texts(["Good food."], ["Bad food."])
    swapped = model.forward_texts(["Bad food."], ["Good food."])
    assert out.label_logits.shape == (1, 2) and not torch.allclose(out.pooled, swapped.pooled)
    explanation = model.explain("Good food.", pair="Bad food.")
    assert explanation.tokens[0].tokens == ["[CLS]", "good", "food", ".", "[SEP]", "bad", "food", ".", "[SEP]"]
    assert explanation.text_pair == "Bad food."
    assert all(e.text_pair in train.text_pairs for e in model.projection.examples[0])


# ---- explanation --------------------------------------------------------------------------
def test_explain_fields(trained):
    explanation = trained.explain(TEXT, top_k=3)
    output = trained.forward_texts([TEXT])
    similarity = output.prototype_similarity[0]
    assert explanation.prediction == trained.predict(TEXT)[0]
    assert [m.prototype for m in explanation.prototypes] == similarity.argsort(descending=True)[:3].tolist()
    for match in explanation.prototypes:
        assert match.similarity == pytest.approx(similarity[match.prototype].item())
        assert match.prototype_class == trained.prototype_class_name(match.prototype)
        assert len(match.nearest_examples) == 3 and match.nearest_examples[0].label == match.prototype_class
    # contributions are similarity × class weight: over all prototypes, plus the bias, they are the logits
    everything = trained.explain(TEXT, top_k=trained.num_prototypes)
    sums = [sum(m.contributions[c] for m in everything.prototypes) for c in trained.spec.classes]
    bias = trained.calibrated(trained.label_head.bias.detach()).numpy()  # logits are over the fitted temperature
    np.testing.assert_allclose(np.array(sums) + bias, output.label_logits[0].numpy(), atol=1e-4)
    gradients, attention = explanation.tokens
    assert (gradients.target, gradients.method) == ("label", "integrated_gradients(steps=20)")
    assert len(gradients.scores) == len(attention.scores)
    # integrated gradients are complete: the scores sum to p(label | text) − p(label | special tokens only)
    label = trained.spec.label_index(explanation.prediction.label)
    ids = trained.encoder.batch([TEXT])["input_ids"]
    special = torch.tensor(
        trained.tokenizer.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True), dtype=torch.bool
    )
    blank = torch.where(special, ids[0], torch.full_like(ids[0], trained.tokenizer.pad_token_id))[None]
    with torch.no_grad():
        drop = (
            trained(ids, torch.ones_like(ids)).label_logits.softmax(-1)[0, label]
            - trained(blank, torch.ones_like(ids)).label_logits.softmax(-1)[0, label]
        ).item()
    assert sum(gradients.scores) == pytest.approx(drop, abs=0.05)
    assert (attention.target, attention.method) == ("attention", "attention")
    assert (
        attention.tokens[0] == "[CLS]"
        and attention.tokens[-1] == "[SEP]"
        and len(attention.tokens) == len(attention.scores)
    )
    assert sum(attention.scores) == pytest.approx(1.0, abs=1e-5)
    json.dumps(explanation.to_dict())
    with pytest.raises(LucidError, match="top_k: expected an integer >= 1, found 0"):
        trained.explain(TEXT, top_k=0)


def test_config_validation(tiny_bert_dir, cebab_small):
    cases = [
        (dict(prototypes_per_class=0), "prototypes_per_class: expected an integer >= 1, found 0"),
        (dict(cohesion_weight=-1.0), "cohesion_weight: expected a weight >= 0"),
        (dict(cohesion_separation_ratio=1.5), "cohesion_separation_ratio: expected a number in"),
        (dict(projection="firm"), "projection: expected one of"),
        (dict(prototypes=10), "unknown key"),
    ]
    for config, message in cases:
        with pytest.raises(LucidError, match=message):
            make(tiny_bert_dir, cebab_small.spec, **config)


def test_a_class_without_training_examples_is_an_error(tiny_bert_dir, cebab_small):
    train = cebab_small.train
    no_fives = train.select(np.flatnonzero(train.labels != 4))
    with pytest.raises(LucidError, match="no training example of class '5'"):
        make(tiny_bert_dir, cebab_small.spec).fit(no_fives, **FAST)


# ---- command line -------------------------------------------------------------------------
def test_cli_train_evaluate_explain(tmp_path, tiny_bert_dir, cebab_dir):
    config = {
        "data": {"source": "cebab", "path": str(cebab_dir), "subsample": {"train": 64, "dev": 32, "test": 32}},
        "model": {
            "family": "prototype",
            "backbone": str(tiny_bert_dir),
            "prototypes_per_class": 2,
            "nearest_examples": 2,
        },
        "training": {"epochs": 1, "batch_size": 16, "seed": 0},
    }
    (tmp_path / "proto.yaml").write_text(yaml.safe_dump(config))
    run = CliRunner().invoke
    trained = run(app, ["train", str(tmp_path / "proto.yaml"), "-o", str(tmp_path / "run"), "--json"])
    assert trained.exit_code == 0, trained.stderr
    metrics = json.loads(trained.stdout)["metrics"]
    evaluated = run(app, ["evaluate", str(tmp_path / "run"), "--json"])
    assert evaluated.exit_code == 0 and json.loads(evaluated.stdout) == metrics["test"]
    table = run(app, ["evaluate", str(tmp_path / "run")])
    assert table.exit_code == 0 and "accuracy" in table.stdout
    explained = run(app, ["explain", str(tmp_path / "run"), TEXT, "--json"])
    assert explained.exit_code == 0, explained.stderr
    explanation = json.loads(explained.stdout)
    assert len(explanation["prototypes"]) == 3 and len(explanation["prototypes"][0]["nearest_examples"]) == 2
    assert [t["target"] for t in explanation["tokens"]] == ["label", "attention"]
    shown = run(app, ["explain", str(tmp_path / "run"), TEXT])
    assert shown.exit_code == 0 and "┃ word" in shown.stdout and "nearest training example" in shown.stdout
    assert explanation["prototypes"][0]["nearest_examples"][0]["text"][:20] in shown.stdout.replace("\n", " ")


def test_cli_explain_a_model_without_explanations(tmp_path, monkeypatch):
    """Every family here explains itself; one that does not gets the contract's one clean error line."""
    import lucidlm.models
    from lucidlm.models import LucidModel

    class Mute(LucidModel):  # defines no explain (and, with no family name here, is not registered)
        pass

    Mute.family = "mute"
    monkeypatch.setattr(lucidlm.models, "load_pretrained", lambda run_dir: object.__new__(Mute))
    result = CliRunner().invoke(app, ["explain", str(tmp_path), TEXT])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: a mute model gives no explanations"
