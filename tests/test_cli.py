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
    calibration = trained["metrics"]["test"]["calibration"]  # a reliability diagram of the test rows
    saved = json.loads((run_dir / "config.json").read_text())["calibration"]
    assert sum(b["n"] for b in calibration["bins"]) == 32 and calibration["temperature"] == saved["label"] != 1.0
    assert saved["fitted_on"] == "dev" and {"ece", "nll"} <= set(trained["metrics"]["test"]["task"])
    table = " ".join(lucidlm("evaluate", run_dir, "--split", "test").stdout.split())
    assert f"reliability of the label's probabilities (temperature {saved['label']:.3f}" in table

    predicted = lucidlm("predict", run_dir, TEXT, "Rude staff.", "--json")
    assert predicted.exit_code == 0, predicted.stderr
    predictions = json.loads(predicted.stdout)
    assert [p["text"] for p in predictions] == [TEXT, "Rude staff."]
    assert set(predictions[0]["concepts"]) == {"food", "ambiance", "service", "noise"}
    from lucidlm import load_pretrained
    from lucidlm.cli import suggestion_line

    suggestions = load_pretrained(run_dir).suggest_corrections(
        [TEXT, "Rude staff."]
    )  # what to check first, as the page asks
    assert [p["suggestion"] for p in predictions] == [pytest.approx(vars(s)) for s in suggestions]
    plain = " ".join(lucidlm("predict", run_dir, TEXT).stdout.split())
    assert suggestion_line(suggestions[0]) in plain

    changed = lucidlm("intervene", run_dir, TEXT, "--set", "service=Negative", "--set", "food=Positive", "--json")
    assert changed.exit_code == 0, changed.stderr
    result = json.loads(changed.stdout)
    before = result["before"]  # the same text, batched alone: equal up to float rounding
    assert before["label"] == predictions[0]["label"]
    assert before["probabilities"] == pytest.approx(predictions[0]["probabilities"], abs=1e-5)
    assert result["after"]["concepts"]["service"]["value"] == "Negative"
    assert result["after"]["concepts"]["food"]["value"] == "Positive"

    table = lucidlm("intervene", run_dir, TEXT, "--set", "service=Negative")
    assert table.exit_code == 0 and "before" in table.stdout and "service (set)" in table.stdout
    after = result["after"]["label"]  # the same correction as the JSON one above but for food
    plain = lucidlm("intervene", run_dir, TEXT, "--set", "service=Negative", "--set", "food=Positive").stdout
    assert ("changes the label from" if result["label_changed"] else f"leaves the label at {after}") in plain
    assert "setting service=Negative, food=Positive" in plain


def test_a_long_text_is_read_as_training_reads_it_and_the_cli_says_so(trained_run):
    run_dir, _ = trained_run
    long = "word " * 600
    predicted = json.loads(lucidlm("predict", run_dir, long, "--json").stdout)[0]
    assert predicted["truncated"] and (predicted["tokens_read"], predicted["tokens_total"]) == (128, 602)
    plain = lucidlm("predict", run_dir, long).stdout.replace("\n", " ")
    assert "the model read the first 128 of this text's 602 tokens" in plain
    assert "read the first" not in lucidlm("predict", run_dir, TEXT).stdout


def test_token_bars_show_their_sign_and_contribution_is_explained(trained_run):
    from lucidlm.cli import signed_bar

    assert signed_bar(0.5, 1.0, width=4) == "[green]+██[/]" and signed_bar(-1.0, 1.0, width=4) == "[red]−████[/]"
    assert signed_bar(0.01, 1.0) == ""
    run_dir, _ = trained_run
    explained = lucidlm("explain", run_dir, TEXT)
    assert explained.exit_code == 0, explained.stderr
    text = " ".join(explained.stdout.split())
    words = json.loads(lucidlm("explain", run_dir, TEXT, "--json").stdout)["tokens"][0]["groups"]
    assert [g["text"] for g in words][:3] == ["Great", "pasta", ","] and "┃ word " in explained.stdout
    assert "+ toward it, − against it" in text and "Contribution: label-head weight × concept activation" in text
    explanation = json.loads(lucidlm("explain", run_dir, TEXT, "--json").stdout)
    share = explanation["concept_values_share"]
    assert 0 <= share <= 1 and f"The concept values account for {share:.0%} of this decision" in text
    for c in explanation["concepts"]:
        assert c["from_value"] + c["from_text"] == pytest.approx(c["contribution"], abs=1e-6)
        assert f"{c['from_value']:+.3f}" in explained.stdout and f"{c['from_text']:+.3f}" in explained.stdout


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
    config["model"] = {
        "family": "sparse",
        "backbone": config["model"]["backbone"],
        "sparsity": 0.5,
        "pruning_start": 0.5,
        "pruning_end": 1.5,
        "pruning_interval": 1,
        "obert_gradients": 2,
    }
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

    committed = lucidlm(
        "intervene", sparse_run, TEXT, "--set", "service=Negative", "--subnetwork", "--commit", "--json"
    )
    assert committed.exit_code == 0, committed.stderr
    changed = load_pretrained(sparse_run).subnetworks
    assert (
        sum(int((changed[n].mask != m).sum()) for n, m in before.items())
        == json.loads(committed.stdout)["weights_changed"]
    )

    two = lucidlm("intervene", sparse_run, TEXT, "--set", "service=Negative", "--set", "food=Positive", "--subnetwork")
    assert two.exit_code == 1 and "one concept at a time" in two.stderr


def test_subnetwork_options_need_a_sparse_model(trained_run):
    run_dir, _ = trained_run
    result = lucidlm("intervene", run_dir, TEXT, "--set", "service=Negative", "--subnetwork")
    assert result.exit_code == 1 and "a bottleneck model cannot take a SubnetworkRewiring correction" in result.stderr
    result = lucidlm("intervene", run_dir, TEXT, "--set", "service=Negative", "--commit")
    assert result.exit_code == 1 and "--commit applies to --subnetwork" in result.stderr


@pytest.mark.parametrize(
    "train, dev, message",
    [
        (
            "review,stars\nGood.,5\nBad.,1\n",
            "review,stars\nFine.,3\n",
            "dev.csv, row 1, field 'stars': unknown label '3'",
        ),
        ("text,stars\nGood.,5\nBad.,1\n", "review,stars\nFine.,5\n", "missing column 'review'"),
        (
            "review,stars,food\nGood.,5,Positive\nBad.,1,Negative\n",
            "review,stars,food\nFine.,5,Tasty\n",
            "unknown value 'Tasty' for concept 'food'",
        ),
        ("review,stars\n", "review,stars\nFine.,5\n", "has no rows"),
    ],
)
def test_train_bad_data_one_line_nonzero_nothing_written(train, dev, message, tmp_path, tiny_bert_dir):
    (tmp_path / "train.csv").write_text(train)
    (tmp_path / "dev.csv").write_text(dev)
    concepts = ["food"] if "food" in train else []
    config = {
        "data": {"source": "train.csv", "text": "review", "label": "stars", "dev": "dev.csv", "concepts": concepts},
        "model": {"family": "bottleneck", "mode": "joint"} if concepts else {"family": "standard"},
        "training": {"epochs": 1},
    }
    config["model"]["backbone"] = str(tiny_bert_dir)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    result = lucidlm("train", tmp_path / "config.yaml", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert message in result.stderr.replace("\n", " "), result.stderr
    assert not (tmp_path / "out").exists()


def test_a_committed_rewiring_brings_the_run_record_up_to_date(sparse_run, tmp_path):
    """run.json (what `lucidlm report` shows) and the forced-concept logits describe the model as
    committed, not as trained; when the data is gone, the record says its metrics are stale."""
    import shutil

    from lucidlm.experiment import load_experiment_task, load_run
    from lucidlm.training import TrainingConfig
    from lucidlm.web.report import build_report

    run_dir = tmp_path / "run"
    shutil.copytree(sparse_run, run_dir)
    trained = json.loads((run_dir / "run.json").read_text())
    committed = lucidlm(
        "intervene", run_dir, TEXT, "--set", "service=Negative", "--subnetwork", "--fraction", "0.3", "--commit"
    )
    assert committed.exit_code == 0, committed.stderr
    assert "dev and test evaluated again" in committed.stdout
    record = json.loads((run_dir / "run.json").read_text())
    assert len(record["commits"]) == len(trained.get("commits", [])) + 1  # the fixture's run may hold one
    assert record["commits"][-1]["change"]["subnetwork"] == "service"
    assert record["commits"][-1]["metrics_before"] == trained["metrics"]
    model, _ = load_run(run_dir)
    task = load_experiment_task(record["experiment"]["data"])
    assert record["metrics"]["test"] == json.loads(json.dumps(model.evaluate(task.test)))
    table = model.concept_layer.intervention_table.clone()
    model.calibrate_on(task.train, TrainingConfig())
    assert torch.equal(model.concept_layer.intervention_table, table)
    assert "measured again after the last one" in build_report(run_dir, limit=4, examples=0)

    record["experiment"]["data"]["path"] = str(tmp_path / "moved")
    (run_dir / "run.json").write_text(json.dumps(record))
    again = lucidlm("intervene", run_dir, TEXT, "--set", "food=Positive", "--subnetwork", "--commit")
    assert again.exit_code == 0, again.stderr
    stale = json.loads((run_dir / "run.json").read_text())
    assert (
        stale["metrics"] == record["metrics"]
        and "describe the model before its committed change" in stale["metrics_stale"]
    )
    assert "Stale:" in build_report(run_dir, limit=4, examples=0)


def makefile_demo_commands(run_dir: Path) -> list[list[str]]:
    """The commands `make cebab` runs after training, for the run in ``run_dir``."""
    import shlex

    recipe, lines = False, []
    for line in (Path(__file__).resolve().parents[1] / "Makefile").read_text().splitlines():
        if line.startswith("cebab:"):
            recipe = True
        elif recipe and line.startswith("\t"):
            lines.append(line.strip())
        elif recipe:
            break
    assert lines and "lucidlm train $(CONFIG)" in lines[0], lines
    return [shlex.split(line.replace("$(BIN)/lucidlm", "").replace("$(RUN)", str(run_dir))) for line in lines[1:]]


@pytest.mark.parametrize("kind", ["standard", "joint", "sparse", "proto"])
def test_the_main_job_ends_with_a_demo_that_fits_the_family(kind, tiny_runs):
    run_dir = tiny_runs[kind]
    commands = makefile_demo_commands(run_dir)
    for command in commands:
        result = lucidlm(*command)
        assert result.exit_code == 0, result.output
    shown = lucidlm("demo", run_dir, "--json")
    assert shown.exit_code == 0, shown.output
    demo = json.loads(shown.stdout)
    if kind in ("standard", "proto"):
        assert demo["intervention"] is None and demo["explanation"]["tokens"]
        assert bool(demo["explanation"]["prototypes"]) == (kind == "proto")
        return
    # a correction that changes concepts, to their gold values, and what it does to the label
    intervention = demo["intervention"]
    assert intervention["interventions"], "nothing was corrected"
    for concept, value in intervention["interventions"].items():
        assert intervention["before"]["concepts"][concept]["value"] != value
        assert intervention["after"]["concepts"][concept]["value"] == value == demo["gold_concepts"][concept]
    assert intervention["label_changed"] == (intervention["before"]["label"] != intervention["after"]["label"])
    assert f"gold {demo['gold_label']}" in lucidlm(*commands[-1]).stdout


def test_the_showcase_is_a_checkable_row_where_the_policy_s_first_question_fixes_the_label(tiny_runs, cebab_dir):
    """Derived again through the public API, row by row: a showcase row's first concept in the
    label-change order (the page's next question) is misread, and setting it alone to gold moves the label to gold; rows a
    person can check (unedited, annotators agreed) come first; an edited row never leads when a
    checkable one exists."""
    from lucidlm import load_pretrained, load_task
    from lucidlm.intervene import INTERVENTION_POLICIES, showcase_corrections

    model = load_pretrained(tiny_runs["joint"])
    split = load_task("cebab", path=cebab_dir).test.sample(300, seed=1)
    shown = showcase_corrections(model, split, count=len(split))
    assert sorted(s.row for s in shown) == list(range(len(split)))  # every row, each once, best first

    def fixes(i) -> tuple[bool, bool]:
        output = model.forward_texts([split.texts[i]])
        first = INTERVENTION_POLICIES.get("label_change")(model, output.concept_states)[0][0]
        concept = model.spec.concepts[first]
        gold = split.concepts[i, first]
        if gold < 0 or model.predict(split.texts[i])[0].concepts[concept.name].value == concept.values[gold]:
            return False, False
        result = model.intervene(split.texts[i], {concept.name: concept.values[gold]})[0]
        gold_label = model.spec.classes[split.labels[i]]
        fixed = result.before.label != gold_label and result.after.label == gold_label
        return fixed, fixed and split.annotations.unanimous(i, first)

    tiers = [fixes(s.row) for s in shown[:20]]
    assert any(fixed for fixed, _ in tiers), "the tiny model fixes no row: the case is not tested"
    ranks = [0 if checkable else 1 if fixed else 2 for fixed, checkable in tiers]
    assert ranks == sorted(ranks)
    if ranks[0] == 0:
        assert not split.annotations.edited[shown[0].row]
    for s, (fixed, _) in zip(shown, tiers):
        if fixed:
            assert (
                s.concept is not None
                and s.value
                == model.spec.concept(s.concept).values[
                    split.concepts[s.row, model.spec.concept_names.index(s.concept)]
                ]
            )


def test_a_csv_task_trains_with_concept_embeddings_through_the_cli(tmp_path, tiny_bert_dir):
    rows = ["review,stars,food,service"]
    for i in range(40):
        food, service = ("good", "bad") if i % 2 else ("bad", "good")
        rows.append(
            f"The food was {food} and the service was {service} on visit {i}.,{1 + (i % 2) * 4},{food},{service}"
        )
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    config = {
        "data": {
            "source": "reviews.csv",
            "text": "review",
            "label": "stars",
            "concepts": ["food", "service"],
            "dev": "reviews.csv",
            "test": "reviews.csv",
        },
        "model": {
            "family": "bottleneck",
            "mode": "joint",
            "concept_layer": "embedding",
            "concept_embedding_size": 8,
            "backbone": str(tiny_bert_dir),
        },
        "training": {"epochs": 1, "batch_size": 8},
    }
    (tmp_path / "cem.yaml").write_text(yaml.safe_dump(config))
    trained = lucidlm("train", tmp_path / "cem.yaml", "-o", tmp_path / "run", "--json")
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["metrics"]["test"]["n"] == 40
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert (saved["concept_layer"], saved["concept_embedding_size"], saved["random_intervention_rate"]) == (
        "embedding",
        8,
        0.25,
    )
    before = json.loads(lucidlm("predict", tmp_path / "run", "The food was good.", "--json").stdout)[0]
    flip = "bad" if before["concepts"]["food"]["value"] == "good" else "good"
    result = json.loads(
        lucidlm("intervene", tmp_path / "run", "The food was good.", "--set", f"food={flip}", "--json").stdout
    )
    assert result["after"]["concepts"]["food"]["probabilities"][flip] == 1.0


def test_help_is_plain_text_and_lists_every_command():
    shown = lucidlm("--help")
    assert shown.exit_code == 0 and "``" not in shown.stdout
    for command in ("train", "evaluate", "predict", "intervene", "explain", "demo", "serve", "report", "concepts"):
        assert f" {command} " in shown.stdout, command


def test_long_commands_show_their_progress(trained_run, monkeypatch):
    """evaluate (and demo, report) log progress lines where there is no terminal, as training does;
    inference inside training stays quiet."""
    from lucidlm import progress

    monkeypatch.setattr(progress, "LINE_EVERY", 0.0)
    run_dir, _ = trained_run
    result = lucidlm("evaluate", run_dir, "--split", "test", "--suite", "faithfulness", "--samples", "3", "--json")
    assert result.exit_code == 0, result.stderr
    assert "evaluate: rows explained (token faithfulness) 3/3" in result.stderr
    quiet = list(progress.tracked(range(5), 5, "items"))  # outside shown_progress: nothing shown
    assert quiet == [0, 1, 2, 3, 4] and len(progress.tracked([], 7, "items")) == 7
