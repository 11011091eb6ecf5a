"""Calibration (docs/methods.md §7.2): temperature scaling fitted on dev after training, saved with
the run and applied on every path; ECE, NLL and the reliability bins checked by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lucidlm import load_pretrained
from lucidlm.calibration import (
    calibration_figures,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_bins,
)
from lucidlm.models import FAMILIES

TEXT = "Great pasta, but we waited an hour."


def test_ece_nll_and_bins_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    bins = reliability_bins(probs, labels)
    # confidences 0.9, 0.8, 0.7, 0.55 fall in bins 13, 12, 10 and 8 of 15
    assert [(b["n"], b["accuracy"]) for b in bins] == [(1, 1.0), (1, 1.0), (1, 0.0), (1, 1.0)]
    assert [b["lower"] for b in bins] == pytest.approx([8 / 15, 10 / 15, 12 / 15, 13 / 15])
    expected = (abs(1 - 0.55) + abs(1 - 0.7) + abs(0 - 0.8) + abs(1 - 0.9)) / 4
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    assert reliability_bins(np.array([[0.0, 1.0]]), np.array([1]))[0]["upper"] == 1.0  # certainty joins the last bin
    logits = np.log(probs)
    assert negative_log_likelihood(logits, labels) == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.7, 0.55])))


def test_the_fitted_temperature_undoes_overconfidence_and_keeps_the_argmax():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(2000, 5)) * 1.5
    labels = np.array([rng.choice(5, p=np.exp(row) / np.exp(row).sum()) for row in true_logits])
    overconfident = true_logits * 3.0  # a model whose logits are 3× too large
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before, after = calibration_figures(overconfident, labels), calibration_figures(overconfident, labels, t)
    assert after["nll"] < before["nll"] and after["ece"] < before["ece"] / 2
    assert fit_temperature(overconfident, labels) == t  # the same rows, the same T


@pytest.fixture(scope="module", params=["standard", "bottleneck", "prototype", "sparse"])
def calibrated(request, tiny_bert_dir, cebab_small):
    from test_contract import FAST, FAST_OPTIONS

    model = FAMILIES.get(request.param).from_backbone(
        str(tiny_bert_dir), task=cebab_small.spec, seed=0, **FAST_OPTIONS.get(request.param, {})
    )
    model.fit(cebab_small.train, eval_data=cebab_small.dev, **FAST)
    return model


def test_every_family_fits_a_temperature_on_dev_and_applies_it_everywhere(calibrated, cebab_small, tmp_path):
    model = calibrated
    t = model.temperatures
    assert t.fitted_on and t.label != 1.0 and t.after["label"]["nll"] <= t.before["label"]["nll"] + 1e-9
    # the dev NLL the model now has is the fitted one, and the argmax (accuracy) is unchanged
    dev = model.evaluate(cebab_small.dev)
    assert dev["task"]["nll"] == pytest.approx(t.after["label"]["nll"], abs=1e-5)
    raw = model.temperatures
    model.temperatures = type(raw)()
    uncalibrated = model.evaluate(cebab_small.dev)
    logits = torch.as_tensor(model.infer(cebab_small.test.select([0]))["label_logits"])
    model.temperatures = raw
    assert uncalibrated["task"]["accuracy"] == dev["task"]["accuracy"]
    assert uncalibrated["task"]["nll"] == pytest.approx(t.before["label"]["nll"], abs=1e-5)
    # predict reads the calibrated probabilities: softmax(logits / T)
    rows = cebab_small.test.select([0])
    expected = (logits / t.label).softmax(-1)[0].tolist()
    assert list(model.predict(rows.texts[0])[0].probabilities.values()) == pytest.approx(expected, abs=1e-5)
    # saved with the run, loaded back
    model.save_pretrained(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["calibration"]["label"] == t.label
    loaded = load_pretrained(tmp_path / "run")
    assert loaded.temperatures == t and loaded.predict(TEXT) == model.predict(TEXT)


def test_concept_temperatures_change_what_is_shown_not_the_label(calibrated, cebab_small):
    model = calibrated
    if not model.spec.concepts or model.family in ("standard", "prototype"):
        pytest.skip("no concepts")
    t = model.temperatures
    assert set(t.concepts) == set(model.spec.concept_names) and any(v != 1.0 for v in t.concepts.values())
    shown = model.predict(TEXT)[0]
    saved = dict(t.concepts)
    t.concepts = {}
    plain = model.predict(TEXT)[0]
    t.concepts = saved
    assert shown.label == plain.label and shown.probabilities == pytest.approx(plain.probabilities, abs=1e-6)
    assert shown.concepts != plain.concepts
    assert {k: c.value for k, c in shown.concepts.items()} == {k: c.value for k, c in plain.concepts.items()}


def test_calibration_can_be_turned_off_and_old_runs_load_uncalibrated(tiny_bert_dir, cebab_small, tmp_path):
    from test_contract import FAST

    model = FAMILIES.get("standard").from_backbone(str(tiny_bert_dir), task=cebab_small.spec, seed=0)
    model.fit(cebab_small.train, eval_data=cebab_small.dev, calibrate=False, **FAST)
    assert model.temperatures.label == 1.0 and model.temperatures.fitted_on is None
    model.save_pretrained(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    del meta["calibration"]  # a run saved before calibration existed
    (tmp_path / "run" / "config.json").write_text(json.dumps(meta))
    assert load_pretrained(tmp_path / "run").predict(TEXT) == model.predict(TEXT)
