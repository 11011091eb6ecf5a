import json

import numpy as np
import pytest

from lucidlm import LucidError, TaskSpec, load_task
from lucidlm.backbone import load_tokenizer
from lucidlm.data import MISSING, Split, TextEncoder
from lucidlm.data.collate import readable_text


def test_cebab_conventions(cebab_dir):
    task = load_task("cebab", path=cebab_dir)
    raw = json.loads((cebab_dir / "train_exclusive.json").read_text())
    kept = [r for r in raw if r["review_majority"] != "no majority"]
    assert len(task.train) == len(kept) == 1463
    assert (len(task.dev), len(task.test)) == (1673, 1689)
    assert task.spec.classes == ("1", "2", "3", "4", "5")
    assert task.spec.concept_names == ["food", "ambiance", "service", "noise"]
    # labels 1..5 -> 0..4; Negative=0, Positive=1, unknown/empty/no majority=2
    assert task.train.labels.tolist() == [int(r["review_majority"]) - 1 for r in kept]
    expected_food = [{"Negative": 0, "Positive": 1}.get(r["food_aspect_majority"], 2) for r in kept]
    assert task.train.concepts[:, 0].tolist() == expected_food
    assert task.train.ids[0] == kept[0]["id"]
    # the majority-class floor the issue quotes: 27.3% of test is class "3"
    assert np.bincount(task.test.labels).max() / len(task.test) == pytest.approx(0.273, abs=5e-4)


def test_cebab_augmented_and_sst2(data_dir):
    aug = load_task("cebab-augmented", path=data_dir / "cebab-augmented")
    assert len(aug.spec.concepts) == 13 and "wi-fi" in aug.spec.concept_names
    assert len(aug.test) == 1685
    yelp = load_task("cebab-augmented", path=data_dir / "cebab-augmented", reviews="yelp")
    assert (len(yelp.train), len(yelp.dev), len(yelp.test)) == (2000, 500, 500)
    sst2 = load_task("sst2", path=data_dir / "sst2")
    assert len(sst2.test) == 872 and len(sst2.dev) == 872 and len(sst2.train) == 67349 - 872
    # the held-out dev rows are not in train
    assert not set(sst2.dev.texts[:50]) & set(sst2.train.texts)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".json", ".jsonl"])
def test_table_files_round_trip(tmp_path, suffix):
    rows = [
        {"review": "Great food.", "stars": "5", "food": "Positive"},
        {"review": "Bad food.", "stars": "1", "food": "Negative"},
        {"review": "Just a place.", "stars": "3", "food": ""},
    ]
    path = tmp_path / f"reviews{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        sep = "\t" if suffix == ".tsv" else ","
        path.write_text("\n".join([sep.join(rows[0])] + [sep.join(r.values()) for r in rows]))
    task = load_task(path, text="review", label="stars", concepts=["food"])
    assert task.spec.classes == ("1", "3", "5")
    assert task.spec.concepts[0].values == ("Negative", "Positive")
    assert task.train.texts == [r["review"] for r in rows]
    assert task.train.labels.tolist() == [2, 0, 1]
    assert task.train.concepts[:, 0].tolist() == [1, 0, MISSING]


def test_regression_and_pairs(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps({"a": f"s{i}", "b": f"t{i}", "score": i / 2}) for i in range(4)))
    task = load_task(path, text="a", text_pair="b", label="score", regression=True)
    assert task.spec.is_regression and task.spec.num_labels == 1
    assert task.train.labels.dtype == np.float32 and task.train.labels.tolist() == [0.0, 0.5, 1.0, 1.5]
    assert task.train.text_pairs == ["t0", "t1", "t2", "t3"]


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "content, options, message",
    [
        (None, {}, "no such file"),
        ("review,stars\n", {}, "has no rows"),
        ("text,stars\nok,5\n", {}, "missing column 'review'"),
        ("review,stars\nok,5\n,4\n", {}, "row 2, field 'review': expected a non-empty text"),
        ("review,stars\nok,5\nfine,4\n", {"classes": ["4", "5"], "dev": "DEV"}, "unknown label 'six'"),
        (
            "review,stars,food\nok,5,Positive\nfine,4,Negative\n",
            {"concepts": {"food": ["Negative", "Positive"]}, "dev": "DEVC"},
            "unknown value 'Tasty' for concept 'food'",
        ),
    ],
)
def test_bad_input_names_the_problem(tmp_path, content, options, message):
    path = tmp_path / "train.csv"
    if content is not None:
        path.write_text(content)
    if options.get("dev") == "DEV":
        options["dev"] = _write(tmp_path, "dev.csv", "review,stars\nok,5\nhmm,six\n")
    if options.get("dev") == "DEVC":
        options["dev"] = _write(tmp_path, "dev.csv", "review,stars,food\nok,5,Tasty\n")
    with pytest.raises(LucidError, match=message) as info:
        load_task(path, text="review", label="stars", **options)
    assert "\n" not in str(info.value)
    if "dev" in options:
        assert "dev.csv, row" in str(info.value)


def test_unknown_preset_and_option(cebab_dir):
    with pytest.raises(LucidError, match="not a preset name"):
        load_task("cebob")
    with pytest.raises(LucidError, match="unexpected keyword"):
        load_task("cebab", path=cebab_dir, colour="red")


def test_dynamic_padding_pads_to_the_longest_in_the_batch(cebab_small):
    encoder = TextEncoder(load_tokenizer("sentence-transformers/all-MiniLM-L6-v2"), max_length=128)
    lengths = [len(ids) for ids in encoder.tokenizer(cebab_small.train.texts[:8])["input_ids"]]
    batch = next(iter(encoder.loader(cebab_small.train, batch_size=8)))
    assert batch["input_ids"].shape == (8, max(lengths)) and max(lengths) < 128
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["concepts"].shape == (8, 4)


def test_user_texts_are_read_as_training_reads_them():
    """One text, one reading on every path: the first ``max_length`` tokens (as the training
    loader), with the text's full length reported; control and format characters removed."""
    encoder = TextEncoder(load_tokenizer("sentence-transformers/all-MiniLM-L6-v2"), max_length=16)
    with pytest.raises(LucidError, match="text 2 is empty"):
        encoder.batch(["fine", "  "])
    with pytest.raises(LucidError, match="text 1 is empty"):
        encoder.batch(["\u202e\u200b\x00"])  # nothing a person can read
    long = encoder.batch(["word " * 100, "word " * 5])
    assert long["input_ids"].shape[1] == 16 and long["attention_mask"].sum(1).tolist() == [16, 7]
    assert long["tokens_total"].tolist() == [102, 7]
    split = Split(texts=["word " * 100], labels=np.zeros(1, dtype=np.int64), concepts=np.zeros((1, 0), dtype=np.int64))
    trained = next(iter(encoder.loader(split, batch_size=1)))
    assert trained["input_ids"][0].tolist() == long["input_ids"][0].tolist()


@pytest.mark.parametrize("hidden", ["\u202e", "\x00", "\u200b", "\u2066", "\ufeff", "\u00ad"])
def test_control_and_invisible_characters_do_not_change_what_the_model_reads(hidden):
    encoder = TextEncoder(load_tokenizer("sentence-transformers/all-MiniLM-L6-v2"), max_length=64)
    plain = "The food was great, the service slow."
    marked = plain[:4] + hidden + plain[4:] + hidden
    assert readable_text(marked) == plain and readable_text("a\tb\nc") == "a\tb\nc"
    assert encoder.tokenize([marked]) == encoder.tokenize([plain])
    assert encoder.batch([marked])["input_ids"].tolist() == encoder.batch([plain])["input_ids"].tolist()


def test_spec_round_trip(cebab_dir):
    spec = load_task("cebab", path=cebab_dir).spec
    assert TaskSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
