"""The concept-layer contract (``models.concept_layers.ConceptLayer``), checked for every layer in
``CONCEPT_LAYERS``: a new layer gets the whole check for free. A toy layer defined in this file,
with no change to the library, is registered, trains, and is served by the CLI, the page's API and
the evaluation suite."""

from __future__ import annotations

import json

import pytest
import torch
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from lucidlm.cli import app as cli
from lucidlm.data import MISSING, ConceptSpec, TaskSpec
from lucidlm.models import CONCEPT_LAYERS, BottleneckConfig, ConceptBottleneckLM, load_pretrained
from lucidlm.models.concept_layers import ConceptLayer
from lucidlm.training import TrainingConfig


class ToyOneHotLayer(ConceptLayer):
    """One linear head per concept; the label reads the probabilities, an intervention is one-hot."""

    confirming_changes_state = True

    def __init__(self, spec, hidden_size, config):
        super().__init__(spec, hidden_size, config)
        self.heads = torch.nn.ModuleList(torch.nn.Linear(hidden_size, len(c.values)) for c in spec.concepts)

    @property
    def width(self):
        return sum(len(c.values) for c in self.spec.concepts)

    def state(self, k, features):
        return self.heads[k](features)

    def logits(self, states):
        return tuple(states)

    def activations(self, states):
        return [s.softmax(-1) for s in states]

    def set_values(self, states, activations, values):
        out = []
        for k, a in enumerate(activations):
            v = values[:, k].to(a.device)
            onehot = torch.nn.functional.one_hot(v.clamp(min=0), a.shape[-1]).to(a)
            out.append(torch.where((v == MISSING).unsqueeze(-1), a, onehot))
        return out

    def value_readings(self, states):
        return self.activations(states)

    def rewired(self, before, after):
        return after


@pytest.fixture(autouse=True, scope="module")
def _toy_registered():
    """The toy layer is registered while this file's tests run, and only then."""
    with CONCEPT_LAYERS.registered("toy-onehot", ToyOneHotLayer):
        yield


LAYER_CONFIGS = {"statement": {"concept_objective": "cos3", "mode": "sequential"}}


def two_valued(spec: TaskSpec) -> TaskSpec:
    return TaskSpec(
        text=spec.text,
        label=spec.label,
        classes=spec.classes,
        concepts=tuple(ConceptSpec(c.name, ("no", "yes")) for c in spec.concepts),
    )


@pytest.mark.parametrize("name", [*CONCEPT_LAYERS.names, "toy-onehot"])  # every library layer, and the toy
def test_every_concept_layer_keeps_the_contract(name, cebab_small):
    spec = two_valued(cebab_small.spec) if name == "statement" else cebab_small.spec
    config = BottleneckConfig(concept_layer=name, **LAYER_CONFIGS.get(name, {}))
    torch.manual_seed(0)
    layer = CONCEPT_LAYERS.get(name)(spec, 12, config)
    assert isinstance(layer, ConceptLayer)
    rows, K = 5, len(spec.concepts)
    features = [torch.randn(rows, 12) for _ in range(K)]
    states = layer.states(features)
    assert len(states) == K and all(torch.equal(s, layer.state(k, f)) for k, (s, f) in enumerate(zip(states, features)))
    logits = layer.logits(states)
    assert [tuple(x.shape) for x in logits] == [(rows, len(c.values)) for c in spec.concepts]
    activations = layer.activations(states)
    assert len(activations) == K and sum(a.shape[-1] for a in activations) == layer.width
    assert all(a.shape[0] == rows for a in activations)
    readings = layer.value_readings(states)
    assert [r.shape for r in readings] == [a.shape for a in activations]
    untouched = layer.set_values(states, activations, torch.full((rows, K), MISSING))
    assert all(torch.equal(u, a) for u, a in zip(untouched, activations))
    values = torch.full((rows, K), MISSING)
    values[:, 0] = 1
    corrected = layer.set_values(states, activations, values)
    assert all(torch.equal(c, a) for c, a in zip(corrected[1:], activations[1:]))
    assert corrected[0].shape == activations[0].shape and not torch.equal(corrected[0], activations[0])
    if name != "statement":  # SparseCBM's rewiring: the statement layer takes none
        for state in states:
            torch.testing.assert_close(layer.rewired(state, state), state)
    gold = torch.randint(0, 2, (rows, K))
    layer.calibrate(states, gold)
    again = type(layer)(spec, 12, config)
    again.load_state_dict(layer.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(again.activations(again.states(features)), layer.activations(states)))
    torch.cat(layer.activations(layer.states(features)), -1).sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_a_registry_refuses_what_is_not_a_concept_layer():
    with pytest.raises(TypeError, match="expected a ConceptLayer"):
        CONCEPT_LAYERS.register("not-a-layer")(torch.nn.Linear)
    assert "not-a-layer" not in CONCEPT_LAYERS


def test_a_toy_layer_trains_and_is_served_by_the_cli_the_api_and_the_suite(tiny_bert_dir, cebab_small, tmp_path):
    from lucidlm.evaluation import run_suite
    from lucidlm.web.app import create_app

    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec, concept_layer="toy-onehot")
    assert model.config.random_intervention_rate == 0.0  # the layer's default
    model.fit(cebab_small.train, eval_data=cebab_small.dev, config=TrainingConfig(epochs=1, progress=False))
    model.save_pretrained(tmp_path / "toy")
    loaded = load_pretrained(tmp_path / "toy")
    assert isinstance(loaded.concept_layer, ToyOneHotLayer)
    text = "Great pasta, but we waited an hour."
    answer = CliRunner().invoke(cli, ["intervene", str(tmp_path / "toy"), text, "--set", "food=Negative", "--json"])
    assert answer.exit_code == 0, answer.output
    after = json.loads(answer.stdout)["after"]["concepts"]["food"]
    assert after["value"] == "Negative" and after["probabilities"]["Negative"] == pytest.approx(1.0)
    with TestClient(create_app(loaded, tmp_path / "toy")) as client:
        served = client.post("/api/intervene", json={"text": text, "values": {"food": "Negative"}}).json()
    assert served["after"]["label"] == json.loads(answer.stdout)["after"]["label"]
    curves = run_suite(loaded, cebab_small, "interventions", samples=8)["interventions"]
    assert curves["k"] == list(range(len(cebab_small.spec.concepts) + 1))
    accuracy = loaded.evaluate(cebab_small.test)["task"]["accuracy"]
    assert curves["random"][0] == curves["uncertainty"][0] == pytest.approx(accuracy)  # nothing corrected yet
