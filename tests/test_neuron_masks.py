"""Neuron-level SparseCBM masks: whole heads and neurons, gathered in the batched pass."""

import pytest
import torch

from lucidlm import LucidError, SparseConceptLM, SubnetworkRewiring
from lucidlm.masking import units_to_keep
from lucidlm.pruning import Pruner, SparsitySchedule

TEXTS = ["Great pasta, but we waited an hour.", "Loud room, rude waiter, cold soup and a long wait."]
FAST = dict(epochs=2, batch_size=16, progress=False)


def neuron_model(backbone_dir, task, **config):
    config = {
        "granularity": "neuron",
        "sparsity": 0.5,
        "pruning_start": 0.5,
        "pruning_end": 1.5,
        "pruning_interval": 2,
        "obert_gradients": 3,
        **config,
    }
    return SparseConceptLM.from_backbone(str(backbone_dir), task=task.spec, **config)


def random_units(model, seed=0):
    """Each concept keeps a random set of units: counts differ between concepts (padding)."""
    generator = torch.Generator().manual_seed(seed)
    for group in model.unit_groups:
        for k in range(model.num_concepts):
            keep = torch.rand(group.num_units, generator=generator) < 0.3 + 0.15 * k
            keep[k % group.num_units] = True
            group.set_units(k, keep)


def whole_units(group) -> bool:
    """Every maker row and reader column of a unit is all kept or all dropped."""
    units = group.unit_masks()
    features = units.repeat_interleave(group.unit_size, dim=1)  # [K, features]
    name, reader = group.reader
    ok = torch.equal(reader.in_out(reader.mask), features.unsqueeze(2).expand_as(reader.in_out(reader.mask)))
    for layer in group.makers.values():
        mask = layer.in_out(layer.mask)
        ok &= torch.equal(mask, features.unsqueeze(1).expand_as(mask))
    return ok


@pytest.mark.parametrize("fixture, layers", [("tiny_bert_dir", "all"), ("tiny_gpt2_dir", "ffn")])
def test_gathered_pass_equals_one_subnetwork_after_another(fixture, layers, cebab_small, request):
    model = neuron_model(request.getfixturevalue(fixture), cebab_small, masked_layers=layers).eval()
    assert {g.kind for g in model.unit_groups} == ({"heads", "neurons"} if layers == "all" else {"neurons"})
    random_units(model)
    counts = model.unit_groups[-1].unit_masks().sum(1)
    assert len(set(counts.tolist())) > 1  # the concepts keep different numbers of units
    batch = model.encoder.batch(TEXTS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        batched, pooled = model.concept_states(ids, mask)
        one_by_one, pooled_ref = model.concept_states_one_by_one(ids, mask)
    torch.testing.assert_close(pooled, pooled_ref, atol=1e-5, rtol=1e-5)
    batched_grad, _ = model.concept_states(ids, mask)  # the training path (no cache) too
    for a, b, c in zip(batched, one_by_one, batched_grad):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(c, b, atol=1e-5, rtol=1e-5)


def test_gathered_gradients_are_the_weight_level_ones_on_kept_units(tiny_bert_dir, cebab_small):
    model = neuron_model(tiny_bert_dir, cebab_small)
    random_units(model, seed=3)
    batch = model.encoder.batch(TEXTS)

    def gradients():
        for layer in model.subnetworks.values():
            layer.record_grads, layer.masked_weight = True, None
        logits, _ = model.concept_states(batch["input_ids"], batch["attention_mask"])
        sum(x.square().sum() for x in logits).backward()
        return {n: layer.concept_gradients() for n, layer in model.subnetworks.items()}

    model.eval()  # no dropout: both passes see the same function
    gathered = gradients()
    axes = {n: layer.unit_axis for n, layer in model.subnetworks.items()}
    for layer in model.subnetworks.values():
        layer.unit_axis = None  # the weight-level batched pass on the same masks
    weight_level = gradients()
    for name, layer in model.subnetworks.items():
        assert axes[name] is not None
        torch.testing.assert_close(gathered[name], weight_level[name] * layer.mask, atol=1e-6, rtol=1e-5)


def test_pruning_keeps_whole_units_and_meets_the_block_density(tiny_bert_dir, cebab_small):
    model = neuron_model(tiny_bert_dir, cebab_small)
    heads, neurons = model.unit_groups[:2]
    assert (heads.kind, heads.num_units, heads.unit_size, heads.weights_per_unit) == (
        "heads",
        2,
        16,
        16 * (3 * 32 + 32),
    )
    assert (neurons.kind, neurons.num_units, neurons.weights_per_unit) == ("neurons", 64, 64)
    # 0.7 of a block: 1 of 2 heads (2048 weights), then (0.3·8192 − 2048) / 64 = 6.4 → 6 neurons
    assert units_to_keep(model.unit_groups[:2], 0.7) == [1, 6]
    pruner = Pruner(model.subnetworks, SparsitySchedule(), 10, score="magnitude", groups=model.unit_groups)
    pruner.prune(0.4)
    before = {n: layer.mask.clone() for n, layer in model.subnetworks.items()}
    with torch.no_grad():
        for layer in model.subnetworks.values():  # magnitude now disagrees with the first pruning
            layer.weight.copy_(torch.randn_like(layer.weight))
    pruner.prune(0.7)
    for group, keep in zip(model.unit_groups, units_to_keep(model.unit_groups, 0.7)):
        assert whole_units(group)
        assert group.unit_masks().sum(1).tolist() == [keep] * 4
    for name, layer in model.subnetworks.items():
        assert not (layer.mask & ~before[name]).any()  # pruned units stay pruned
    assert all(d == pytest.approx(0.3, abs=0.01) for d in model.mask_density().values())


def test_neuron_training_intervention_and_round_trip(tiny_bert_dir, cebab_small, tmp_path):
    model = neuron_model(tiny_bert_dir, cebab_small).fit(cebab_small.train, eval_data=cebab_small.dev, **FAST).eval()
    assert all(d == pytest.approx(0.5, abs=0.01) for d in model.mask_density().values())
    assert all(whole_units(g) for g in model.unit_groups)
    masks = [g.unit_masks() for g in model.unit_groups]
    result = model.intervene(TEXTS[0], SubnetworkRewiring("service", "Negative", fraction=0.5, commit=True))[0]
    assert result.weights_changed > 0
    for group, old in zip(model.unit_groups, masks):
        new = group.unit_masks()
        assert whole_units(group) and torch.equal(new.sum(1), old.sum(1))  # whole units, same count
        assert torch.equal(new[[0, 1, 3]], old[[0, 1, 3]])  # only the service subnetwork moved
    model.save_pretrained(tmp_path / "run")
    loaded = SparseConceptLM.from_pretrained(tmp_path / "run")
    assert loaded.config.granularity == "neuron" and len(loaded.unit_groups) == 4
    a, b = model.infer(cebab_small.test), loaded.infer(cebab_small.test)
    torch.testing.assert_close(torch.from_numpy(a["label_logits"]), torch.from_numpy(b["label_logits"]), atol=0, rtol=0)


def test_neuron_config_errors(tiny_bert_dir, tiny_gpt2_dir, cebab_small):
    with pytest.raises(LucidError, match="query, key and value"):
        neuron_model(tiny_gpt2_dir, cebab_small)  # GPT-2's fused c_attn
    with pytest.raises(LucidError, match="block by block"):
        neuron_model(tiny_bert_dir, cebab_small, pruning_scope="global")
    with pytest.raises(LucidError, match="granularity"):
        neuron_model(tiny_bert_dir, cebab_small, granularity="row")
