"""SparseCBM mechanics: per-concept masks, the batched pass, pruning, packing, round trips."""

import dataclasses
import itertools

import pytest
import torch

from lucidlm import LucidError, SparseConceptLM, SubnetworkRewiring
from lucidlm.masking import MaskedLinear, pack_masks, routed, select_layers, unpack_masks
from lucidlm.pruning import Pruner, SparsitySchedule, obert_inverse_diagonal

TEXTS = ["Great pasta, but we waited an hour.", "Loud room, rude waiter, cold soup and a long wait."]
FAST = dict(epochs=2, batch_size=16, progress=False)


def sparse(backbone_dir, task, **config):
    config = {
        "sparsity": 0.5,
        "pruning_start": 0.5,
        "pruning_end": 1.5,
        "pruning_interval": 2,
        "obert_gradients": 3,
        **config,
    }
    return SparseConceptLM.from_backbone(str(backbone_dir), task=task.spec, **config)


def random_masks(model, density=0.6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for layer in model.subnetworks.values():
        layer.mask.copy_(torch.rand(layer.mask.shape, generator=generator) < density)


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, cebab_small):
    model = sparse(tiny_bert_dir, cebab_small)
    model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    return model.eval()


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_gpt2_dir"])
def test_batched_pass_equals_one_subnetwork_after_another(fixture, cebab_small, request):
    model = sparse(request.getfixturevalue(fixture), cebab_small).eval()
    random_masks(model)
    batch = model.encoder.batch(TEXTS)
    with torch.no_grad():
        batched, pooled = model.concept_states(batch["input_ids"], batch["attention_mask"])
        one_by_one, pooled_ref = model.concept_states_one_by_one(batch["input_ids"], batch["attention_mask"])
    assert pooled.shape == (4, 2, 32)
    torch.testing.assert_close(pooled, pooled_ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(batched, one_by_one):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    random_masks(model, seed=1)  # inference caches W ⊙ M: a mask change must be seen
    with torch.no_grad():
        batched, _ = model.concept_states(batch["input_ids"], batch["attention_mask"])
        one_by_one, _ = model.concept_states_one_by_one(batch["input_ids"], batch["attention_mask"])
    for a, b in zip(batched, one_by_one):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mixup_mixes_each_subnetworks_pooled_vector_across_the_batch(tiny_bert_dir, cebab_small):
    from lucidlm.models.losses import Mixup

    model = sparse(tiny_bert_dir, cebab_small, concept_layer="embedding", mixup_alpha=0.4).eval()
    random_masks(model)
    batch = model.encoder.batch(TEXTS + ["Quiet and clean."])
    mix = Mixup(0.3, torch.tensor([2, 0, 1]))
    with torch.no_grad():
        states, pooled = model.concept_states(batch["input_ids"], batch["attention_mask"], mix)
        _, plain = model.concept_states(batch["input_ids"], batch["attention_mask"])
    torch.testing.assert_close(pooled, 0.3 * plain + 0.7 * plain[:, [2, 0, 1]])  # [K, B, H]: rows of each concept
    torch.testing.assert_close(states[1], model.concept_layer.state(1, model.dropout(pooled[1])))


def test_gpt2_conv1d_and_layer_choices(tiny_gpt2_dir, tiny_bert_dir, cebab_small):
    gpt2 = sparse(tiny_gpt2_dir, cebab_small)
    assert {n.split(".")[-1] for n in gpt2.subnetworks} == {"c_attn", "c_proj", "c_fc"}
    assert all(layer.transposed for layer in gpt2.subnetworks.values())
    bert = sparse(tiny_bert_dir, cebab_small).backbone
    assert len(select_layers(bert, "all")) == 12 and len(select_layers(bert, "ffn")) == 4
    assert len(select_layers(bert, "attention")) == 8
    assert all(".1." in n for n in select_layers(bert, "top:1")) and len(select_layers(bert, "top:1")) == 6
    assert not any("pooler" in n or "embeddings" in n for n in select_layers(bert, "all"))
    with pytest.raises(LucidError, match="masked_layers"):
        select_layers(bert, "top:zero")


def test_masks_are_truly_per_concept(trained, cebab_small):
    masks = {n: layer.mask for n, layer in trained.subnetworks.items()}
    for j, k in itertools.combinations(range(4), 2):
        inter = sum((m[j] & m[k]).sum().item() for m in masks.values())
        union = sum((m[j] | m[k]).sum().item() for m in masks.values())
        assert inter / union < 1.0
    # concept k's head on mask j != k gives other outputs than on its own mask
    batch = trained.encoder.batch(TEXTS)
    with torch.no_grad():
        own = trained.concept_layer.heads[0](trained.subnetwork_pooled(batch["input_ids"], batch["attention_mask"], 0))
        other = trained.concept_layer.heads[0](
            trained.subnetwork_pooled(batch["input_ids"], batch["attention_mask"], 1)
        )
    assert (own - other).abs().max() > 1e-4


def test_density_hits_its_target_per_concept_and_layer(trained):
    for name, density in trained.mask_density().items():
        assert density == pytest.approx(0.5, abs=0.01), name
    for layer in trained.subnetworks.values():
        per_concept = layer.mask.reshape(4, -1).float().mean(1)
        assert torch.allclose(per_concept, torch.full((4,), 0.5), atol=0.01)
    assert trained.pruning_history[-1]["sparsity"] == 0.5


def test_pruned_weights_stay_pruned(tiny_bert_dir, cebab_small):
    model = sparse(tiny_bert_dir, cebab_small)
    pruner = Pruner(model.subnetworks, SparsitySchedule(), steps_per_epoch=10, score="magnitude")
    with torch.no_grad():  # make magnitude disagree with the earlier pruning
        pruner.prune(0.3)
        before = {n: l.mask.clone() for n, l in model.subnetworks.items()}
        for layer in model.subnetworks.values():
            layer.weight.copy_(torch.randn_like(layer.weight))
        pruner.prune(0.6)
    for name, layer in model.subnetworks.items():
        assert not (layer.mask & ~before[name]).any()  # nothing regrows
        assert layer.mask.float().mean().item() == pytest.approx(0.4, abs=0.01)


def test_the_last_pruning_event_applies_the_final_sparsity(tiny_bert_dir, cebab_small):
    """end = 0.6 epochs of 4 steps rounds to step 2, where the schedule reads 0.5 epochs (0.688):
    the last event must still reach 0.7, as model selection assumes from then on."""
    model = sparse(tiny_bert_dir, cebab_small)
    pruner = Pruner(
        model.subnetworks, SparsitySchedule(0.2, 0.7, 0.25, 0.6), steps_per_epoch=4, score="magnitude", interval=1
    )
    assert pruner.events == [1, 2]
    for step in range(8):
        pruner.after_step(step)
    assert [h["sparsity"] for h in pruner.history] == pytest.approx([0.2, 0.7])
    assert all(d == pytest.approx(0.3, abs=0.001) for d in model.mask_density().values())
    assert pruner.selectable(1)


def test_global_scope_keeps_the_global_density(tiny_bert_dir, cebab_small):
    model = sparse(tiny_bert_dir, cebab_small, pruning_scope="global")
    Pruner(model.subnetworks, SparsitySchedule(), 10, score="magnitude", scope="global").prune(0.7)
    assert all(d == pytest.approx(0.3, abs=0.001) for d in model.mask_density().values())
    per_layer = [layer.mask[0].float().mean().item() for layer in model.subnetworks.values()]
    assert max(per_layer) - min(per_layer) > 0.01  # layers differ under a global threshold


@pytest.mark.parametrize(
    "kind, expected", [("linear", [0.0, 0.2, 0.45, 0.7, 0.7]), ("cubic", [0.0, 0.2, 0.6375, 0.7, 0.7])]
)
def test_sparsity_schedules(kind, expected):
    schedule = SparsitySchedule(initial=0.2, final=0.7, start=1, end=3, kind=kind)
    assert [schedule.at(e) for e in (0.5, 1, 2, 3, 10)] == pytest.approx(expected)


def test_obert_inverse_diagonal_is_exact():
    torch.manual_seed(0)
    m, n, block, damp = 5, 12, 4, 1e-3
    grads = torch.randn(m, n)
    diag = obert_inverse_diagonal(grads, block, damp)
    expected = []
    for b in range(n // block):
        g = grads[:, b * block : (b + 1) * block].double()
        fisher = damp * torch.eye(block, dtype=torch.float64) + g.T @ g / m
        expected.append(torch.linalg.inv(fisher).diagonal())
    torch.testing.assert_close(diag, torch.cat(expected).float(), rtol=1e-4, atol=0)


def test_mask_packing_round_trip():
    masks = torch.rand(4, 7, 13) < 0.3
    packed = pack_masks(masks)
    assert packed.dtype == torch.uint8 and packed.shape == (4, (7 * 13 + 7) // 8)
    assert torch.equal(unpack_masks(packed, masks.shape), masks)


def test_save_load_round_trip(trained, cebab_small, tmp_path):
    trained.save_pretrained(tmp_path / "run")
    loaded = SparseConceptLM.from_pretrained(tmp_path / "run")
    for name, layer in trained.subnetworks.items():
        assert torch.equal(loaded.subnetworks[name].mask, layer.mask)
    assert loaded.pruning_history == trained.pruning_history
    a, b = trained.infer(cebab_small.test), loaded.infer(cebab_small.test)
    torch.testing.assert_close(torch.from_numpy(a["label_logits"]), torch.from_numpy(b["label_logits"]), atol=0, rtol=0)


def test_checkpoint_is_close_to_the_dense_size(tmp_path, cebab_small):
    """K=4 bit-packed masks on the default backbone add at most 20% to the dense checkpoint."""
    from lucidlm import ConceptBottleneckLM

    dense = ConceptBottleneckLM.from_backbone(task=cebab_small.spec, mode="joint")
    model = SparseConceptLM.from_backbone(task=cebab_small.spec)
    size = lambda m, d: (m.save_pretrained(tmp_path / d) / "model.safetensors").stat().st_size  # noqa: E731
    assert size(model, "sparse") <= 1.2 * size(dense, "dense")


def test_config_errors(tiny_bert_dir, cebab_small):
    with pytest.raises(LucidError, match="trains jointly"):
        sparse(tiny_bert_dir, cebab_small, mode="sequential")
    with pytest.raises(LucidError, match="sparsity"):
        sparse(tiny_bert_dir, cebab_small, sparsity=1.2)
    with pytest.raises(LucidError, match="pruning_score: expected one of"):
        sparse(tiny_bert_dir, cebab_small, pruning_score="random").fit(cebab_small.train, **FAST)
    with pytest.raises(LucidError, match="must reach model.pruning_end"):
        sparse(tiny_bert_dir, cebab_small, pruning_end=4).fit(cebab_small.train, **FAST)


def test_routed_restores_the_route(trained):
    layer = next(iter(trained.subnetworks.values()))
    assert isinstance(layer, MaskedLinear) and layer.route is None
    with routed(trained.subnetworks, 2):
        assert layer.route == 2
    assert layer.route is None


def test_explanation_has_three_levels(trained):
    explanation = trained.explain(TEXTS[0], steps=8)
    tokens = trained.encoder.batch([TEXTS[0]])["input_ids"].shape[1]
    assert [t.target for t in explanation.tokens] == ["food", "ambiance", "service", "noise"]
    assert all(len(t.tokens) == len(t.scores) == tokens for t in explanation.tokens)
    stats = explanation.subnetworks
    jaccard = torch.tensor(stats["jaccard"])
    assert torch.allclose(jaccard.diagonal(), torch.ones(4)) and torch.allclose(jaccard, jaccard.T)
    assert stats["density"] == pytest.approx(trained.mask_density())
    assert stats["shared_by_all"] + sum(stats["owned_by_one"].values()) <= 1.0
    assert {tuple(torch.tensor(v).shape) for v in stats["head_responsibility"].values()} == {(4, 2)}
    # concept level: the contributions add up to the predicted label's logit, less the bias
    prediction = explanation.prediction
    logits = trained(*[trained.encoder.batch([TEXTS[0]])[k] for k in ("input_ids", "attention_mask")]).label_logits[0]
    c = trained.spec.label_index(prediction.label)
    total = sum(x.contribution for x in explanation.concepts) + trained.calibrated(trained.label_head.bias)[c].item()
    assert total == pytest.approx(logits[c].item(), abs=1e-4)
    assert explanation.to_json()  # serialisable


def test_integrated_gradients_completeness(trained):
    """IG's attributions sum to f(input) − f(baseline) (up to the Riemann error)."""
    from lucidlm.explain.tokens import integrated_gradients

    batch = trained.encoder.batch([TEXTS[1]])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    score = lambda i, m: trained.single_concept_logits(i, m, 2).softmax(-1)[:, 0]  # noqa: E731
    attribution = integrated_gradients(trained, ids, mask, score, "service", steps=64)
    special = torch.tensor(
        trained.tokenizer.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True)
    ).bool()
    baseline = torch.where(special, ids[0], torch.full_like(ids[0], trained.tokenizer.pad_token_id)).unsqueeze(0)
    with torch.no_grad():
        gap = (score(ids, mask) - score(baseline, mask)).item()
    assert sum(attribution.scores) == pytest.approx(gap, abs=0.02 * max(1.0, abs(gap)))


def test_subnetwork_intervention_is_local_and_keeps_sparsity(trained):
    masks = {n: l.mask.clone() for n, l in trained.subnetworks.items()}
    result = trained.intervene(TEXTS[0], SubnetworkRewiring("service", "Negative", fraction=0.3))[0]
    assert result.weights_changed > 0 and not result.committed
    for name, layer in trained.subnetworks.items():  # this input only: the model is unchanged
        assert torch.equal(layer.mask, masks[name])
    for other in ("food", "ambiance", "noise"):  # other concepts run through untouched subnetworks
        assert result.after.concepts[other] == result.before.concepts[other]
    committed = trained.intervene(TEXTS[0], SubnetworkRewiring("service", "Negative", fraction=0.3, commit=True))[0]
    assert committed.after.concepts["service"] == result.after.concepts["service"]
    changed = 0
    for name, layer in trained.subnetworks.items():
        assert layer.mask[2].sum() == masks[name][2].sum()  # same sparsity, other weights
        assert torch.equal(layer.mask[[0, 1, 3]], masks[name][[0, 1, 3]])
        changed += int((layer.mask[2] != masks[name][2]).sum())
        layer.mask.copy_(masks[name])  # leave the shared fixture as it was
    assert changed == committed.weights_changed
    with pytest.raises(LucidError, match="fraction"):
        trained.intervene(TEXTS[0], SubnetworkRewiring("service", "Negative", fraction=1.5))[0]


def test_taylor_rewiring_moves_the_concept_toward_the_given_value(trained):
    masks = {n: l.mask.clone() for n, l in trained.subnetworks.items()}
    for text in TEXTS:
        before = trained.predict(text)[0].concepts["service"]
        value = next(v for v in ("Negative", "Positive", "unknown") if v != before.value)
        result = trained.intervene(text, SubnetworkRewiring("service", value, fraction=0.05, score="taylor"))[0]
        assert result.score == "taylor" and result.to_dict()["score"] == "taylor"
        # flipping the weights whose first-order effect lowers the concept's loss raises p(value)
        assert result.after.concepts["service"].probabilities[value] > before.probabilities[value]
    for name, layer in trained.subnetworks.items():
        assert torch.equal(layer.mask, masks[name])
    with pytest.raises(LucidError, match="score"):
        trained.intervene(TEXTS[0], SubnetworkRewiring("service", "Negative", score="random"))[0]


def test_a_rewired_scalar_concept_is_read_at_the_scale_its_logits_had(tiny_bert_dir, cebab_small):
    """Scalar logits: a rewiring decides which value the concept favours, not the scale at which
    the label head reads it (raw rewired logits left the head's training range on CEBaB)."""
    model = sparse(tiny_bert_dir, cebab_small).eval()
    layer = model.concept_layer
    before = torch.tensor([[2.0, -1.0, 0.5]])
    wider = torch.tensor([[-3.0, 5.0, 1.0]])  # favours value 1, with twice the spread
    read = layer.rewired(before, wider)
    assert read.argmax(-1).item() == 1 and (read.max() - read.min()).item() == pytest.approx(3.0)
    assert read.mean().item() == pytest.approx(before.mean().item())
    assert torch.equal(layer.rewired(before, before), before)
    narrower = torch.tensor([[0.0, 1.0, 0.5]])  # less sure than before: as it is, about before's mean
    assert layer.rewired(before, narrower) == pytest.approx(narrower + before.mean() - narrower.mean())
    random_masks(model)
    rewiring = SubnetworkRewiring("service", "Negative", fraction=0.3, score="taylor")
    result = model.intervene(TEXTS[0], rewiring)[0]
    with torch.no_grad():
        before = model.forward_texts([TEXTS[0]])
        committed = model.intervene(TEXTS[0], dataclasses.replace(rewiring, commit=True))[0]
        rewired = model.forward_texts([TEXTS[0]])
        states = list(before.concept_states)
        states[2] = layer.rewired(before.concept_states[2], rewired.concept_states[2])
        expected = model.output_of(states, before.pooled).label_logits.softmax(-1)[0].tolist()
    # the concept shows what its rewired subnetwork says; the label reads it at the old scale
    assert result.after.concepts["service"] == committed.after.concepts["service"]
    assert list(result.after.probabilities.values()) == pytest.approx(expected, abs=1e-5)
    assert list(committed.after.probabilities.values()) != pytest.approx(expected, abs=1e-4)


def test_a_rewired_concept_embedding_reads_the_new_probabilities_over_the_old_embeddings(tiny_bert_dir, cebab_small):
    model = sparse(tiny_bert_dir, cebab_small, concept_layer="embedding").eval()
    random_masks(model)
    rewiring = SubnetworkRewiring("service", "Negative", fraction=0.3)
    result = model.intervene(TEXTS[0], rewiring)[0]
    with torch.no_grad():
        before = model.forward_texts([TEXTS[0]])
        committed = model.intervene(TEXTS[0], dataclasses.replace(rewiring, commit=True))[0]
        rewired = model.forward_texts([TEXTS[0]])  # the committed mask moves embeddings and probabilities
        p = rewired.concept_logits[2].softmax(-1)
        activations = model.concept_activations(before.concept_states)
        activations[2] = (p.unsqueeze(-1) * before.concept_states[2]).sum(1)
        expected = model.label_from_concepts(activations).softmax(-1)[0].tolist()
    service = result.after.concepts["service"].probabilities
    assert service == pytest.approx(committed.after.concepts["service"].probabilities, abs=1e-5)
    assert not torch.allclose(rewired.concept_states[2], before.concept_states[2], atol=1e-3)  # embeddings moved
    assert list(result.after.probabilities.values()) == pytest.approx(expected, abs=1e-5)
    # the committed model reads the new embeddings as well: another label distribution
    assert list(committed.after.probabilities.values()) != pytest.approx(expected, abs=1e-4)
