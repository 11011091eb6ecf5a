"""IntCEM as published (``intervention_objective: published``, docs/methods.md §7.1; models/intcem.py)
beside today's simplified term (``sampled_horizon``, §6.2), on the tiny random BERT."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from lucidlm import ConceptBottleneckLM, LucidError, load_pretrained
from lucidlm.data import MISSING
from lucidlm.evaluation import run_suite
from lucidlm.experiment import read_experiment
from lucidlm.intervene import INTERVENTION_POLICIES
from lucidlm.models.bottleneck import BottleneckConfig, random_interventions
from lucidlm.models.intcem import (
    ConceptReadings,
    draw_rollout,
    horizon_limit,
    imitation_targets,
    initial_bound,
    length_bound,
    published_rollout,
    rollout_weights,
)
from lucidlm.models.losses import concept_loss, task_loss

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TEXT = "Great pasta, but we waited an hour and the room was loud."
PUBLISHED = dict(
    concept_layer="embedding",
    concept_embedding_size=4,
    intervention_objective="published",
    intervention_loss_weight=5.0,
)


def published(tiny_bert_dir, cebab_small, seed=0, **options):
    return ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=cebab_small.spec, seed=seed, **{**PUBLISHED, **options}
    )


def imitation_loss(model, batch) -> float:
    """ψ's cross-entropy to its imitation targets on ``batch``, without any draw: from no concept set
    and from each single concept set, in evaluation mode."""
    model.eval()
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"])
        gold = batch["concepts"]
        known = gold != MISSING
        readings = ConceptReadings.of(model, out.concept_states, gold)
        masks = [torch.zeros(gold.shape)] + [
            torch.zeros(gold.shape).index_fill(1, torch.tensor([k]), 1.0) * known for k in range(gold.shape[1])
        ]
        total = 0.0
        for mask in masks:
            candidates = known & (mask < 0.5)
            targets = imitation_targets(model, readings, mask, candidates, batch["labels"])
            scores = model.learned_policy(readings.features(mask)).masked_fill(~candidates, -1e9)
            has = candidates.any(1)
            total += float(F.cross_entropy(scores[has], targets[has]))
    return total / len(masks)


def test_rollout_task_loss_weights_each_step_by_the_discount_by_hand(tiny_bert_dir, cebab_small):
    """γ = 1.1: weights 1, γ, γ², γ³ over 1 + γ + γ² + γ³ (the un-intervened loss included; last_step:
    1 and γ³ over 1 + γ³); on a fixed rollout of the model, its task loss is that weighted sum of the
    losses after each step's mask, each step setting one new concept with a gold value, and the
    step's loss is that sum + λ·Σ_k CE(c_k) + w·imitation."""
    g = 1.1
    assert rollout_weights(3, g) == pytest.approx([1 / 4.641, 1.1 / 4.641, 1.21 / 4.641, 1.331 / 4.641])
    assert rollout_weights(3, g, "last_step") == pytest.approx([1 / 2.331, 0.0, 0.0, 1.331 / 2.331])
    assert rollout_weights(0, g) == [1.0]

    model = published(
        tiny_bert_dir, cebab_small
    ).eval()  # eval: no dropout; ψ's batch norm reads its running statistics
    model.rollout_step = 10_000  # H = 2·1.005^184 ≈ 5.01 for K = 4: T up to 3
    batch = next(iter(model.encoder.loader(cebab_small.train, 16)))
    gold, k = batch["concepts"], len(model.spec.concepts)
    for seed in range(50):  # the first seed whose rollout has two steps or more
        torch.manual_seed(seed)
        values = random_interventions(gold, model.config.random_intervention_rate)
        out = model(batch["input_ids"], batch["attention_mask"], values)
        rollout = published_rollout(model, out, batch, values, model.rollout_step)
        if rollout.length >= 2:
            break
    assert rollout.length >= 2 and len(rollout.masks) == rollout.length + 1
    assert rollout.weights == pytest.approx(
        [g**t / sum(g**s for s in range(rollout.length + 1)) for t in range(rollout.length + 1)]
    )
    by_hand = []
    for t, mask in enumerate(rollout.masks):
        chosen = mask.detach() > 0.5
        assert ((mask.detach() == 0) | (mask.detach() == 1)).all() and (gold[chosen] != MISSING).all()
        if t == 0:
            assert (chosen | ~rollout.randint).all()  # μ⁽⁰⁾: RandInt's concepts and n₀ more
            logits = out.label_logits  # CE(y | RandInt): the forward pass's own prediction
        else:
            new = chosen & ~(rollout.masks[t - 1].detach() > 0.5)
            left = (gold != MISSING) & ~(rollout.masks[t - 1].detach() > 0.5)
            assert (new.sum(1) == left.any(1).long()).all()  # one new concept a row, where one is left
            logits = model.intervened_label_logits(
                out.concept_states, torch.where(chosen, gold, MISSING), correct_only=False
            )
        by_hand.append(task_loss(model.spec, logits, batch["labels"]))
    torch.testing.assert_close(rollout.task, sum(w * loss for w, loss in zip(rollout.weights, by_hand)))

    torch.manual_seed(seed)  # the whole step's loss, drawn alike
    loss = model.training_loss(model, batch)
    expected = (
        rollout.task
        + model.config.concept_loss_weight * concept_loss(out.concept_logits, gold)
        + 5.0 * rollout.imitation
    )
    torch.testing.assert_close(loss, expected)
    assert k == 4


def test_horizon_grows_by_the_rate_up_to_k_plus_one_and_bounds_the_rollout_by_hand():
    """H_s = 2·1.005^s while H < K + 1 = 5: ⌊H⌋ is 2 up to step 81 (2·1.005^81 = 2.996) and 3 from
    step 82 (3.011); the first H ≥ 5 is at step 184 (log 2.5 / log 1.005 = 183.7) and stays. The
    draws: n₀ ~ U{0 … min(⌊H⌋, F − 1) − 1}, T ~ U{1 … min(⌊H⌋, max_horizon, F − n₀) − 1}."""
    assert horizon_limit(0, 2.0, 1.005, 4) == 2.0
    assert horizon_limit(1, 2.0, 1.005, 4) == pytest.approx(2.01)
    assert int(horizon_limit(81, 2.0, 1.005, 4)) == 2 and int(horizon_limit(82, 2.0, 1.005, 4)) == 3
    assert horizon_limit(183, 2.0, 1.005, 4) < 5 <= horizon_limit(184, 2.0, 1.005, 4)
    assert horizon_limit(184, 2.0, 1.005, 4) == pytest.approx(2 * 1.005**184)
    assert horizon_limit(10**6, 2.0, 1.005, 4) == horizon_limit(184, 2.0, 1.005, 4)
    assert horizon_limit(10**6, 2.0, 1.005, 13) == pytest.approx(
        2 * 1.005**391
    )  # K + 1 = 14: log 7 / log 1.005 = 390.2 → 391
    assert horizon_limit(50, 2.0, 1.0, 4) == 2.0 and horizon_limit(50, 6.0, 1.005, 4) == 6.0

    assert initial_bound(2.0, 4) == 2 and initial_bound(5.01, 4) == 3 and initial_bound(5.01, 1) == 0
    assert length_bound(5.01, 6, 4, 1) == 3 and length_bound(2.0, 6, 4, 0) == 2 and length_bound(13.0, 6, 13, 0) == 6
    generator = torch.Generator().manual_seed(0)
    assert {draw_rollout(2.0, 6, 4, generator) for _ in range(200)} == {(0, 1), (1, 1)}
    assert {draw_rollout(5.01, 6, 4, generator) for _ in range(500)} == {(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (2, 1)}
    assert {draw_rollout(13.9, 6, 13, generator)[1] for _ in range(500)} == {1, 2, 3, 4, 5}  # T < max_horizon
    assert draw_rollout(5.01, 6, 1, generator) == (0, 0) and draw_rollout(5.01, 6, 0, generator) == (0, 0)


def test_imitation_target_is_the_candidate_whose_correction_lowers_the_task_loss_most(tiny_bert_dir, cebab_small):
    """For each row, every concept not yet set that has a gold value is tried on the label head,
    set to gold through the model's own intervention; the target is the one with the lowest
    cross-entropy. Concepts set already, or without a gold value, are never targets."""
    model = published(tiny_bert_dir, cebab_small).eval()
    with torch.no_grad():
        model.label_head.weight.mul_(20.0)  # the candidates' losses far apart
    batch = next(iter(model.encoder.loader(cebab_small.train, 16)))
    gold, labels = batch["concepts"].clone(), batch["labels"]
    gold[:6, 1] = MISSING
    with torch.no_grad():
        out = model(batch["input_ids"], batch["attention_mask"])
    known = gold != MISSING
    mask = torch.zeros(gold.shape)
    mask[:, 0] = known[:, 0].float()
    candidates = known & (mask < 0.5)
    readings = ConceptReadings.of(model, out.concept_states, gold)
    targets = imitation_targets(model, readings, mask, candidates, labels)

    with torch.no_grad():
        expected = []
        for i in range(len(gold)):
            losses = {}
            for k in range(gold.shape[1]):
                if not candidates[i, k]:
                    continue
                values = torch.where(mask > 0.5, gold, MISSING)
                values[i, k] = gold[i, k]
                logits = model.intervened_label_logits(out.concept_states, values, correct_only=False)
                losses[k] = float(F.cross_entropy(logits[i : i + 1], labels[i : i + 1]))
            expected.append(min(losses, key=losses.get))
    assert targets.tolist() == expected
    assert candidates[torch.arange(len(gold)), targets].all()
    assert len(set(expected)) > 1  # not one concept for every row


def test_published_objective_trains_and_its_policy_learns_to_imitate(tiny_bert_dir, cebab_small):
    """A tiny CEBaB model trains for 30 steps with the published objective on one batch: finite
    losses, the loop's step reached the rollout (its hooks), and ψ's imitation loss on that batch
    fell by more than 10% (here 1.14 → 0.90; seeds 0 and 1: ×0.91, ×0.83; the imitation targets move
    as the label head trains, and ψ sees neither the label nor the gold values)."""
    rows = cebab_small.train.select(range(16))
    model = published(tiny_bert_dir, cebab_small, seed=2)
    batch = next(iter(model.encoder.loader(rows, 16)))
    before = imitation_loss(model, batch)
    model.fit(rows, epochs=30, batch_size=16, progress=False, seed=2)
    losses = [record["loss"] for record in model.training_history]
    assert len(losses) == 30 and np.isfinite(losses).all()
    assert model.rollout_step == 29
    after = imitation_loss(model, batch)
    assert after < 0.9 * before, (before, after)


def test_published_model_saves_its_policy_and_loads_with_the_same_predictions_and_orders(
    tiny_bert_dir, cebab_small, tmp_path
):
    """ψ's weights and batch-norm statistics are in model.safetensors; the loaded model predicts and
    orders exactly as the saved one, with and without gold values; its curve is in the suite."""
    model = published(tiny_bert_dir, cebab_small)
    model.fit(cebab_small.train, epochs=1, batch_size=16, progress=False)
    model.save_pretrained(tmp_path / "intcem")
    tensors = load_file(str(tmp_path / "intcem" / "model.safetensors"))
    policy = {name: tensor for name, tensor in model.state_dict().items() if name.startswith("learned_policy.")}
    assert "learned_policy.net.1.weight" in policy and "learned_policy.net.0.running_mean" in policy
    for name, tensor in policy.items():
        assert torch.equal(tensors[name], tensor)
    loaded = load_pretrained(tmp_path / "intcem")
    assert loaded.config.intervention_objective == "published" and loaded.predict(TEXT) == model.predict(TEXT)
    learned = INTERVENTION_POLICIES.get("learned")
    states = [torch.from_numpy(x) for x in model.infer(cebab_small.test)["concept_states"]]
    gold = torch.from_numpy(cebab_small.test.concepts)
    for given in (None, gold):
        order = learned(model, states, gold=given)
        assert np.array_equal(order, learned(loaded, states, gold=given))
        assert (np.sort(order, axis=1) == np.arange(4)).all()  # a permutation of the concepts in every row
    curves = run_suite(loaded, cebab_small, "interventions", seed=0)["interventions"]
    assert len(curves["learned"]) == 5 and curves["learned"][0] == curves["uncertainty"][0]


def test_the_learned_policy_needs_the_published_objective(tiny_bert_dir, cebab_small):
    """Today's objective trains no policy: asking for the learned one is an error that names the
    objective that trains it; the fixed policy of sampled_horizon cannot be 'learned'."""
    model = ConceptBottleneckLM.from_backbone(
        str(tiny_bert_dir), task=cebab_small.spec, concept_layer="embedding", intervention_loss_weight=5.0
    )
    assert model.learned_policy is None and not any(n.startswith("learned_policy") for n in model.state_dict())
    states = model.forward_texts([TEXT]).concept_states
    with pytest.raises(LucidError, match="trained by intervention_objective: published"):
        INTERVENTION_POLICIES.get("learned")(model, states)
    with pytest.raises(
        LucidError, match="intervention_policy 'learned' is the policy that intervention_objective 'published'"
    ):
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, intervention_policy="learned")


def test_an_unknown_or_impossible_objective_is_one_clear_error(tiny_bert_dir, cebab_small, tmp_path):
    with pytest.raises(LucidError) as error:
        ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, intervention_objective="intcem")
    assert (
        str(error.value) == "intervention_objective: expected one of ['sampled_horizon', 'published'], found 'intcem'"
    )
    config = yaml.safe_load((CONFIGS / "cebab-intcem.yaml").read_text())
    config["model"]["intervention_objective"] = "intcem"
    config["data"]["path"] = str(tmp_path / "nowhere")  # read before any data: never opened
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(LucidError, match=r"intervention_objective: expected one of \['sampled_horizon', 'published'\]"):
        read_experiment(tmp_path / "bad.yaml")
    for options, message in [
        ({"mode": "sequential"}, "joint mode only"),
        ({"intervention_loss_weight": 0.0}, "turns it on"),
        ({"mixup_alpha": 0.4}, "mixup"),
        ({"intervention_holdout": 0.2}, "intervention_holdout"),
        ({"rollout_losses": "first"}, "rollout_losses: expected one of"),
    ]:
        with pytest.raises(LucidError, match=message):
            BottleneckConfig(**{**PUBLISHED, "concept_embedding_size": 4, **options})


def test_todays_objective_stays_the_default_and_the_intcem_configs_name_it():
    """No figure moves: sampled_horizon is the default, and every "IntCEM" config says it uses it."""
    assert BottleneckConfig().intervention_objective == "sampled_horizon"
    for name in ("cebab-intcem", "cebab-intcem-augmented", "cebab-intcem-counterfactual"):
        raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        assert raw["model"]["intervention_objective"] == "sampled_horizon"
        assert read_experiment(CONFIGS / f"{name}.yaml").model["intervention_objective"] == "sampled_horizon"


def test_sparse_models_refuse_the_published_objective_when_the_config_is_read():
    from lucidlm.models.subnetworks import SparseConfig

    with pytest.raises(
        LucidError,
        match="intervention_objective: a sparse concept model trains with 'sampled_horizon'; found 'published'",
    ):
        SparseConfig(concept_layer="embedding", intervention_objective="published", intervention_loss_weight=5.0)
