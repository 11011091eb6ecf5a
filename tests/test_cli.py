"""The command line end to end on a tiny config: train, evaluate, predict, intervene, and bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from lucidlm.cli import app

TEXT = "Great pasta, but we waited an hour."


def lucidlm(*args):
    """The CLI in this process (fast); ``lucidlm_process`` runs the real entry point."""
    return CliRunner().invoke(app, [str(a) for a in args])


def lucidlm_process(*args):
    return subprocess.run([sys.executable, "-m", "lucidlm.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, tiny_bert_dir, cebab_dir):
    folder = tmp_path_factory.mktemp("cli")
    config = {
        "data": {"source": "cebab", "path": str(cebab_dir), "subsample": {"train": 64, "dev": 32, "test": 32}},
        "model": {"family": "bottleneck", "mode": "joint", "backbone": str(tiny_bert_dir)},
        "training": {"epochs": 1, "batch_size": 16, "seed": 0},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained_run(tiny_config):
    run_dir = tiny_config.parent / "run-a"
    result = lucidlm("train", tiny_config, "-o", run_dir, "--json")
    assert result.exit_code == 0, result.stderr
    return run_dir, json.loads(result.stdout)


def test_train_writes_a_run_and_same_seed_gives_same_metrics(trained_run, tiny_config):
    run_dir, first = trained_run
    assert {"config.json", "model.safetensors", "run.json", "backbone"} <= {p.name for p in run_dir.iterdir()}
    assert set(first["metrics"]) == {"dev", "test"} and first["metrics"]["test"]["n"] == 32
    second = lucidlm("train", tiny_config, "-o", tiny_config.parent / "run-b", "--json")
    assert second.exit_code == 0, second.stderr
    assert json.loads(second.stdout)["metrics"] == first["metrics"]


def test_evaluate_predict_intervene(trained_run):
    run_dir, trained = trained_run
    evaluated = lucidlm("evaluate", run_dir, "--split", "test", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout) == trained["metrics"]["test"]

    predicted = lucidlm("predict", run_dir, TEXT, "Rude staff.", "--json")
    assert predicted.exit_code == 0, predicted.stderr
    predictions = json.loads(predicted.stdout)
    assert [p["text"] for p in predictions] == [TEXT, "Rude staff."]
    assert set(predictions[0]["concepts"]) == {"food", "ambiance", "service", "noise"}

    changed = lucidlm("intervene", run_dir, TEXT, "--set", "service=Negative", "--set", "food=Positive", "--json")
    assert changed.exit_code == 0, changed.stderr
    result = json.loads(changed.stdout)
    before = result["before"]  # the same text, batched alone: equal up to float rounding
    assert before["label"] == predictions[0]["label"]
    assert before["probabilities"] == pytest.approx(predictions[0]["probabilities"], abs=1e-5)
    assert result["after"]["concepts"]["service"]["value"] == "Negative"
    assert result["after"]["concepts"]["food"]["value"] == "Positive"

    table = lucidlm("intervene", run_dir, TEXT, "--set", "service=Negative")
    assert table.exit_code == 0 and "before" in table.stdout and "service" in table.stdout


def _bad_config(folder: Path, tiny_config: Path, change) -> Path:
    config = yaml.safe_load(tiny_config.read_text())
    change(config)
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-config", "no such config file"),
        ("unknown-key", "unknown key(s) ['epochz']"),
        ("unknown-model-key", "unknown key(s) ['lambda']"),
        ("missing-data", "no such folder"),
        ("unknown-mode", "mode: expected one of"),
    ],
)
def test_train_bad_input_one_line_nonzero_nothing_written(case, message, tiny_config, tmp_path):
    changes = {
        "unknown-key": lambda c: c["training"].update(epochz=3),
        "unknown-model-key": lambda c: c["model"].update({"lambda": 2}),
        "missing-data": lambda c: c["data"].update(path=str(tmp_path / "nowhere")),
        "unknown-mode": lambda c: c["model"].update(mode="jointly"),
    }
    config = tmp_path / "absent.yaml" if case == "missing-config" else _bad_config(tmp_path, tiny_config, changes[case])
    out_dir = tmp_path / "out"
    result = lucidlm("train", config, "-o", out_dir)
    assert result.exit_code == 1
    assert message in result.stderr.replace("\n", " ")
    assert result.stderr.strip().startswith("error:") and len(result.stderr.strip().splitlines()) <= 2
    assert not out_dir.exists() and not list(tmp_path.glob(".out.*"))


def test_bad_runs_and_texts(trained_run, tmp_path):
    run_dir, _ = trained_run
    cases = [
        (("predict", tmp_path, TEXT), "not a saved lucidlm run"),
        (("predict", run_dir, "   "), "text 1 is empty"),
        (("predict", run_dir, "word " * 600), "tokens long; this model reads at most 128"),
        (("intervene", run_dir, TEXT, "--set", "decor=Positive"), "unknown concept 'decor'"),
        (("intervene", run_dir, TEXT, "--set", "service"), "expected concept=value"),
        (("evaluate", run_dir, "--split", "validation"), "no split 'validation'"),
    ]
    for args, message in cases:
        result = lucidlm(*args)
        assert result.exit_code == 1, args
        assert message in result.stderr.replace("\n", " "), (args, result.stderr)


def test_real_process_one_error_line_and_debug_traceback(tmp_path):
    plain = lucidlm_process("predict", tmp_path, TEXT)
    assert plain.returncode == 1 and plain.stdout == ""
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a saved lucidlm run" in lines[0]
    debug = lucidlm_process("--debug", "predict", tmp_path, TEXT)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


@pytest.fixture(scope="module")
def sparse_run(tiny_config):
    config = yaml.safe_load(tiny_config.read_text())
    config["model"] = {"family": "sparse", "backbone": config["model"]["backbone"], "sparsity": 0.5,
                       "pruning_start": 0.5, "pruning_end": 1.5, "pruning_interval": 1, "obert_gradients": 2}
    config["training"]["epochs"] = 2
    path = tiny_config.parent / "sparse.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tiny_config.parent / "run-sparse"
    result = lucidlm("train", path, "-o", run_dir, "--json")
    assert result.exit_code == 0, result.stderr
    return run_dir


def test_sparse_explain_and_subnetwork_intervention(sparse_run):
    from lucidlm.models import load_pretrained

    explained = lucidlm("explain", sparse_run, TEXT, "--json")
    assert explained.exit_code == 0, explained.stderr
    explanation = json.loads(explained.stdout)
    assert [t["target"] for t in explanation["tokens"]] == ["food", "ambiance", "service", "noise"]
    assert explanation["subnetworks"]["density"]["food"] == pytest.approx(0.5, abs=0.01)
    table = lucidlm("explain", sparse_run, TEXT)
    assert table.exit_code == 0 and "Jaccard" in table.stdout

    before = {n: l.mask.clone() for n, l in load_pretrained(sparse_run).subnetworks.items()}
    local = lucidlm("intervene", sparse_run, TEXT, "--set", "service=Negative", "--subnetwork", "--json")
    assert local.exit_code == 0, local.stderr
    assert json.loads(local.stdout)["committed"] is False
    unchanged = load_pretrained(sparse_run).subnetworks
    assert all(torch.equal(unchanged[n].mask, m) for n, m in before.items())

    committed = lucidlm("intervene", sparse_run, TEXT, "--set", "service=Negative", "--subnetwork", "--commit", "--json")
    assert committed.exit_code == 0, committed.stderr
    changed = load_pretrained(sparse_run).subnetworks
    assert sum(int((changed[n].mask != m).sum()) for n, m in before.items()) == json.loads(committed.stdout)["weights_changed"]

    two = lucidlm("intervene", sparse_run, TEXT, "--set", "service=Negative", "--set", "food=Positive", "--subnetwork")
    assert two.exit_code == 1 and "one concept at a time" in two.stderr


def test_subnetwork_options_need_a_sparse_model(trained_run):
    run_dir, _ = trained_run
    result = lucidlm("intervene", run_dir, TEXT, "--set", "service=Negative", "--subnetwork")
    assert result.exit_code == 1 and "no concept subnetworks" in result.stderr
    result = lucidlm("intervene", run_dir, TEXT, "--set", "service=Negative", "--commit")
    assert result.exit_code == 1 and "--commit applies to --subnetwork" in result.stderr


@pytest.mark.parametrize(
    "train, dev, message",
    [
        ("review,stars\nGood.,5\nBad.,1\n", "review,stars\nFine.,3\n", "dev.csv, row 1, field 'stars': unknown label '3'"),
        ("text,stars\nGood.,5\nBad.,1\n", "review,stars\nFine.,5\n", "missing column 'review'"),
        ("review,stars,food\nGood.,5,Positive\nBad.,1,Negative\n", "review,stars,food\nFine.,5,Tasty\n",
         "unknown value 'Tasty' for concept 'food'"),
        ("review,stars\n", "review,stars\nFine.,5\n", "has no rows"),
    ],
)
def test_train_bad_data_one_line_nonzero_nothing_written(train, dev, message, tmp_path, tiny_bert_dir):
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "dev.csv").write_text(dev)
    concepts = ["food"] if "food" in train else []
    config = {"data": {"source": "train.csv", "text": "review", "label": "stars", "dev": "dev.csv", "concepts": concepts},
              "model": {"family": "bottleneck", "mode": "joint" if concepts else "standard", "backbone": str(tiny_bert_dir)},
              "training": {"epochs": 1}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = lucidlm("train", tmp_path / "config.yaml", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert message in result.stderr.replace("\n", " "), result.stderr
    assert not (tmp_path / "out").exists()
