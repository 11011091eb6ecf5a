"""Concepts without concept labels: statements read from presets, files and configs (with clear
errors), scored by the real offline MiniLM (cosines, cached), corrected by the label (ACC), and a
label-free bottleneck trained, saved and corrected through the CLI on a plain CSV."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from lucidlm import LucidError
from lucidlm.cli import app
from lucidlm.data import automatic_concepts as ac
from lucidlm.data.automatic_concepts import Statement, concept_scores, corrected_scores, read_statements

STATEMENTS = [
    Statement("The food was delicious.", ("1",)),
    Statement("The service was slow.", ("0",)),
    Statement("It was too noisy."),
]


def lucidlm(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_statements_come_from_presets_files_and_lists_and_bad_ones_are_one_clear_line(tmp_path):
    cebab = read_statements("cebab", ("1", "2", "3", "4", "5"))
    assert len(cebab) == 29 and cebab[0] == Statement(
        "The food was delicious.", ("2", "3", "4", "5"), (("food", "Positive"),)
    )
    assert {s.classes for s in read_statements("sst2", ("0", "1"))} == {("0",), ("1",)}
    (tmp_path / "mine.txt").write_text("The plot is predictable.\n\n  The acting   is superb. \n")
    assert [s.text for s in read_statements(tmp_path / "mine.txt")] == [
        "The plot is predictable.",
        "The acting is superb.",
    ]
    assert read_statements({"pos": ["Great."], "neg": ["Bad."]}, ("neg", "pos"))[1] == Statement("Bad.", ("neg",))

    with pytest.raises(
        LucidError, match=r"automatic_concepts.statements: expected a non-empty list of concept statements"
    ):
        read_statements([])
    with pytest.raises(LucidError, match=r"concept 3 repeats concept 1: 'the plot is predictable!'"):
        read_statements(["The plot is predictable.", "Fine.", "the plot is predictable!"])
    with pytest.raises(LucidError, match=r"missing.yaml: cannot read the concept file \(FileNotFoundError"):
        read_statements(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("- [unclosed\n")
    with pytest.raises(LucidError, match=r"broken.yaml: cannot read the concept file \(ScannerError|ParserError"):
        read_statements(tmp_path / "broken.yaml")
    with pytest.raises(
        LucidError, match=r"concept 1 \('Great.'\): unknown class 'positive'; the classes are \['0', '1'\]"
    ):
        read_statements([{"statement": "Great.", "class": "positive"}], ("0", "1"))


def test_scores_are_cosines_of_the_real_sentence_model_cached_on_disk(tmp_path, monkeypatch):
    texts = [
        "The pasta was delicious and fresh.",
        "We waited an hour; the waiter was so slow.",
        "Loud music, could not hear.",
    ]
    scores = concept_scores(texts, STATEMENTS, cache_dir=str(tmp_path))
    assert scores.shape == (3, 3) and np.all(np.abs(scores) <= 1.0 + 1e-6)
    assert scores.argmax(1).tolist() == [0, 1, 2]  # each text is closest to the statement it supports
    assert len(list((tmp_path / "concept_scores").glob("*.safetensors"))) == 1

    monkeypatch.setattr(ac, "_scorer", lambda *args: pytest.fail("a cached scoring loaded the model"))
    np.testing.assert_array_equal(concept_scores(texts, STATEMENTS, cache_dir=str(tmp_path)), scores)


def test_the_score_cache_follows_the_scorer_files_not_its_name(tmp_path, tiny_bert_dir):
    """Overwrite a scorer's weights under the same name: its scores are computed again, and
    equal a fresh scoring by the new weights (the cache had brought back the old ones)."""
    import shutil

    import torch
    import transformers

    scorer = tmp_path / "scorer"
    shutil.copytree(tiny_bert_dir, scorer)
    texts = ["The pasta was delicious.", "The waiter was slow."]
    before = concept_scores(texts, STATEMENTS, scorer=str(scorer), cache_dir=str(tmp_path / "cache"))
    torch.manual_seed(1)
    transformers.BertModel(transformers.BertConfig.from_pretrained(scorer)).save_pretrained(scorer)
    after = concept_scores(texts, STATEMENTS, scorer=str(scorer), cache_dir=str(tmp_path / "cache"))
    fresh = concept_scores(texts, STATEMENTS, scorer=str(scorer), cache_dir=str(tmp_path / "other-cache"))
    assert not np.allclose(before, after)
    np.testing.assert_allclose(after, fresh, atol=1e-6)
    assert len(list((tmp_path / "cache" / "concept_scores").glob("*.safetensors"))) == 2


def test_text_pairs_are_refused_not_scored_by_their_first_text(cebab_small):
    from dataclasses import replace

    from lucidlm.data.automatic_concepts import with_automatic_concepts

    paired = replace(cebab_small, train=replace(cebab_small.train, text_pairs=list(cebab_small.train.texts)))
    with pytest.raises(LucidError, match="the train split has text pairs; statements are scored against single texts"):
        with_automatic_concepts(paired, {"statements": "cebab"})


def test_correction_zeroes_statements_of_other_classes_and_clips_negatives():
    scores = np.array([[0.5, 0.4, -0.2], [0.3, 0.6, 0.1]])
    corrected = corrected_scores(scores, np.array([1, 0]), STATEMENTS, ("0", "1"))
    np.testing.assert_array_equal(corrected, [[0.5, 0.0, 0.0], [0.0, 0.6, 0.1]])


def test_a_label_free_bottleneck_trains_from_a_plain_csv_through_the_cli(tmp_path, tiny_bert_dir):
    rows = ["review,stars"] + [
        f"{'The food was delicious' if i % 2 else 'The service was slow'} on visit {i}.,{i % 2}" for i in range(40)
    ]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    config = {
        "data": {
            "source": "reviews.csv",
            "text": "review",
            "label": "stars",
            "dev": "reviews.csv",
            "test": "reviews.csv",
            "automatic_concepts": {
                "statements": [{"statement": s.text, "classes": list(s.classes)} for s in STATEMENTS],
                "cache_dir": str(tmp_path / "cache"),
            },
        },
        "model": {
            "family": "bottleneck",
            "mode": "sequential",
            "label_penalty": "elastic",
            "backbone": str(tiny_bert_dir),
        },
        "training": {"epochs": 1, "batch_size": 8},
    }
    (tmp_path / "label-free.yaml").write_text(yaml.safe_dump(config))
    trained = lucidlm("train", tmp_path / "label-free.yaml", "-o", tmp_path / "run", "--json")
    assert trained.exit_code == 0, trained.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [c["name"] for c in saved["task"]["concepts"]] == [s.text for s in STATEMENTS]
    assert all(c["values"] == ["no", "yes"] for c in saved["task"]["concepts"])
    head = saved["training_history"][-1]
    assert head["penalty"] == "elastic" and len(head["path"]) == 9
    nonzero = [p["nonzero_weights"] for p in head["path"]]
    assert nonzero[0] < nonzero[-1]  # the path runs from sparse to dense

    result = lucidlm(
        "intervene", tmp_path / "run", "The food was delicious.", "--set", "It was too noisy.=yes", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["after"]["concepts"]["It was too noisy."]["probabilities"]["yes"] == 1.0

    config["data"]["automatic_concepts"]["statements"] = []
    (tmp_path / "empty.yaml").write_text(yaml.safe_dump(config))
    refused = lucidlm("train", tmp_path / "empty.yaml", "-o", tmp_path / "empty-run")
    assert refused.exit_code == 1 and "expected a non-empty list of concept statements" in refused.output
    assert not (tmp_path / "empty-run").exists()


def test_the_concept_set_report_finds_silent_and_duplicate_concepts_and_agreement_with_human_labels(
    tmp_path, tiny_bert_dir, cebab_dir
):
    """On CEBaB's own statements: a statement that repeats another in other words is flagged, the
    human labels the statements stand for are compared with them, and the report says what the
    label layer reads."""
    statements = [
        {"statement": "The food was delicious.", "classes": ["4", "5"], "matches": {"food": "Positive"}},
        {"statement": "The food was really delicious.", "classes": ["4", "5"], "matches": {"food": "Positive"}},
        {"statement": "The service was slow.", "classes": ["1", "2"], "matches": {"service": "Negative"}},
    ]
    config = {
        "data": {
            "source": "cebab",
            "path": str(cebab_dir),
            "subsample": {"train": 64, "dev": 32, "test": 64},
            "automatic_concepts": {"statements": statements, "cache_dir": str(tmp_path / "cache")},
        },
        "model": {"family": "bottleneck", "mode": "joint", "label_penalty": "elastic", "backbone": str(tiny_bert_dir)},
        "training": {"epochs": 1, "batch_size": 16},
    }
    (tmp_path / "cebab.yaml").write_text(yaml.safe_dump(config))
    assert lucidlm("train", tmp_path / "cebab.yaml", "-o", tmp_path / "run").exit_code == 0
    result = lucidlm("evaluate", tmp_path / "run", "--suite", "concepts", "--json")
    assert result.exit_code == 0, result.output
    quality = json.loads(result.stdout)["results"]["concepts"]
    assert quality["concepts"] == 3 and quality["rows"] == 64
    assert [d["concepts"] for d in quality["near_duplicates"]] == [
        ["The food was delicious.", "The food was really delicious."]
    ]
    assert {r["human"] for r in quality["human_agreement"]} == {"food = Positive", "service = Negative"}
    assert all(0.0 <= r["auc"] <= 1.0 for r in quality["human_agreement"])
    assert set(quality["label_layer"]) == {"1", "2", "3", "4", "5"}
    assert set(quality["activations"]) == {s["statement"] for s in statements}
    assert (tmp_path / "run" / "evaluation.md").read_text().count("## Is the concept set any good?") == 1


def test_concepts_are_proposed_by_a_chat_model_and_statements_naming_a_class_are_ruled_out(
    tmp_path, tiny_bert_dir, monkeypatch
):
    """``lucidlm concepts propose`` through LiteLLM against a stand-in OpenAI-style server on 127.0.0.1."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from lucidlm.web.serve import serving

    prompts = []

    async def complete(request):
        prompt = (await request.json())["messages"][0]["content"]
        prompts.append(prompt)
        good = "delicious" if 'of the class "praise"' in prompt else "slow"
        content = f"1. The food was {good}.\n- This review is full of praise.\nThe food was {good}.\n\nThe staff cared."
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": "stand-in",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )

    stand_in = Starlette(routes=[Route("/v1/chat/completions", complete, methods=["POST"])])
    monkeypatch.setenv("OPENAI_API_KEY", "not-needed-by-the-stand-in")

    rows = ["review,stars"] + [f"{'Lovely food' if i % 2 else 'Slow service'} on visit {i}.,{i % 2}" for i in range(20)]
    (tmp_path / "reviews.csv").write_text("\n".join(rows) + "\n")
    config = {
        "data": {"source": "reviews.csv", "text": "review", "label": "stars"},
        "model": {"family": "bottleneck", "backbone": str(tiny_bert_dir)},
    }
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(config))
    with serving(stand_in) as url:
        result = lucidlm(
            "concepts",
            "propose",
            tmp_path / "task.yaml",
            "--model",
            "openai/stand-in",
            "--api-base",
            f"{url}/v1",
            "--class-name",
            "0=complaint",
            "--class-name",
            "1=praise",
            "--examples",
            "2",
            "-o",
            tmp_path / "concepts.yaml",
        )
    assert result.exit_code == 0, result.output
    proposed = yaml.safe_load((tmp_path / "concepts.yaml").read_text())
    # the statement naming a class ("praise") is ruled out, repeats dropped (within and across classes)
    assert proposed == {"0": ["The food was slow.", "The staff cared."], "1": ["The food was delicious."]}
    assert (
        len(prompts) == 2 and 'of the class "complaint"' in prompts[0] and "visit" in prompts[0]
    )  # class names and examples shown
    assert [s.text for s in read_statements(tmp_path / "concepts.yaml", ("0", "1"))][:1] == ["The food was slow."]

    refused = lucidlm(
        "concepts",
        "propose",
        tmp_path / "task.yaml",
        "--model",
        "openai/stand-in",
        "--api-base",
        "http://127.0.0.1:9/v1",
        "-o",
        tmp_path / "none.yaml",
    )
    assert refused.exit_code == 1 and "did not answer" in refused.output and not (tmp_path / "none.yaml").exists()
