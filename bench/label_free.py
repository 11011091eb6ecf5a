"""Concept bottlenecks without concept labels (CB-LLM's recipe), default backbone:

- SST-2: the standard model and the label-free bottleneck on the same 3000 training rows, epochs
  and seed (configs/sst2-{standard,label-free}.yaml), reported on GLUE dev (our test); the sparse
  label layer's dev accuracy against its non-zero weights (the path), and what it reads per class.
- CEBaB: the shipped statements' agreement with the human aspect labels (ROC AUC per aspect and
  polarity) as raw MiniLM cosines and as the trained label-free model's concepts, and its task
  accuracy beside the supervised joint model (bench/results/cebab_bottleneck.json).
- What ACC does to the concepts' agreement with the human aspect labels on the training texts,
  the targets the concept layer learns (no training: cached scores).
- The score cache: the scoring step's time on a second run over the same texts, against the first.

    python bench/label_free.py [--parts cache sst2 cebab correction]

Writes bench/results/label_free.{json,md}, merging the parts run now into the earlier ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import transformers
from sklearn.metrics import roc_auc_score

from cebab_bottleneck import relative_paths  # noqa: E402 (bench/ is on the path)
from lucidlm.data.automatic_concepts import concept_scores, corrected_scores, read_statements
from lucidlm.evaluation.concept_set import label_layer_weights
from lucidlm.experiment import automatic_concept_sources, load_experiment_task, read_experiment, run_experiment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PARTS = ("cache", "sst2", "cebab", "correction")


def train(config: str, name: str) -> tuple[object, dict]:
    experiment = read_experiment(ROOT / "configs" / config, output_dir=ROOT / "runs" / f"bench-{name}")
    experiment.training.progress = False
    start = time.perf_counter()
    model, metrics = run_experiment(experiment)
    return model, {"config": f"configs/{config}", "test": metrics["test"]["task"], "dev": metrics["dev"]["task"],
                   "seconds": time.perf_counter() - start, "epochs": sum(1 for r in model.training_history if "epoch" in r)}


def cache_part() -> dict:
    data = read_experiment(ROOT / "configs" / "sst2-label-free.yaml").data
    task = load_experiment_task({k: v for k, v in data.items() if k != "automatic_concepts"})
    texts = [t for split in task.splits().values() for t in split.texts]
    statements = read_statements("sst2")
    with tempfile.TemporaryDirectory() as cache:
        times = []
        for _ in range(2):
            start = time.perf_counter()
            concept_scores(texts, statements, cache_dir=cache)
            times.append(time.perf_counter() - start)
    return {"texts": len(texts), "statements": len(statements), "first_seconds": times[0], "second_seconds": times[1],
            "ratio": times[1] / times[0]}


def sst2_part() -> dict:
    _, standard = train("sst2-standard.yaml", "sst2-standard")
    model, label_free = train("sst2-label-free.yaml", "sst2-label-free")
    head = next(r for r in reversed(model.training_history) if r.get("stage") == "c→y")
    label_free.update(path=head["path"], concepts=len(model.spec.concepts),
                      label_layer={c: rows[:8] for c, rows in label_layer_weights(model).items()})
    return {"standard": standard, "label-free": label_free}


def cebab_part() -> dict:
    model, row = train("cebab-label-free.yaml", "cebab-label-free")
    data = read_experiment(ROOT / "configs" / "cebab-label-free.yaml").data
    statements, human = automatic_concept_sources(data, "test")
    test = load_experiment_task({k: v for k, v in data.items() if k != "automatic_concepts"}).test
    raw = concept_scores(test.texts, statements)
    logits = model.infer(load_experiment_task(data).test)["concept_logits"]
    trained = np.stack([1.0 / (1.0 + np.exp(x[:, 0] - x[:, 1])) for x in logits], axis=1)
    agreement = []
    for (concept, value), members in statement_groups(statements).items():
        truth = human[concept] == value
        agreement.append({"aspect": concept, "value": value, "statements": [statements[j].text for j in members],
                          "positives": int(truth.sum()),
                          "raw_plain": float(roc_auc_score(truth, raw[:, members[0]])),  # one plain statement
                          "raw": float(roc_auc_score(truth, raw[:, members].mean(1))),
                          "trained": float(roc_auc_score(truth, trained[:, members].mean(1)))})
    head = next(r for r in reversed(model.training_history) if r.get("stage") == "c→y")
    return {"label-free": {**row, "path": head["path"]}, **supervised_rows(), "agreement": agreement}


def supervised_rows() -> dict:
    """The supervised joint and sequential models' test task metrics (bench/cebab_bottleneck.py):
    joint as the issue's comparison, sequential trained in the same two stages as the label-free model."""
    rows_file = RESULTS / "cebab_bottleneck.json"
    rows = json.loads(rows_file.read_text())["modes"] if rows_file.is_file() else {}
    return {f"supervised_{m}_test": rows[m]["test"]["task"] for m in ("joint", "sequential") if m in rows}


def statement_groups(statements) -> dict[tuple[str, str], list[int]]:
    """(aspect, value) -> the statements that stand for it (``matches``)."""
    groups: dict[tuple[str, str], list[int]] = {}
    for j, s in enumerate(statements):
        for match in s.matches:
            groups.setdefault(match, []).append(j)
    return groups


def correction_part() -> dict:
    """ROC AUC against the human aspect labels of CEBaB's training texts: the raw scores, and the
    ACC-corrected scores that the concept layer is trained to reproduce."""
    data = read_experiment(ROOT / "configs" / "cebab-label-free.yaml").data
    statements, human = automatic_concept_sources(data, "train")
    task = load_experiment_task({k: v for k, v in data.items() if k != "automatic_concepts"})
    raw = concept_scores(task.train.texts, statements)
    corrected = corrected_scores(raw, task.train.labels, statements, task.spec.classes)
    rows = []
    for (concept, value), members in statement_groups(statements).items():
        truth = human[concept] == value
        rows.append({"aspect": concept, "value": value, "raw": float(roc_auc_score(truth, raw[:, members].mean(1))),
                     "corrected": float(roc_auc_score(truth, corrected[:, members].mean(1))),
                     # how often a review of each rating has this aspect value: what a tie may rule out
                     "share_by_rating": {c: float(truth[task.train.labels == i].mean()) for i, c in enumerate(task.spec.classes)}})
    return {"train_texts": len(task.train), "agreement": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    results_file = RESULTS / "label_free.json"
    result = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for part in args.parts:
        result[part] = {"cache": cache_part, "sst2": sst2_part, "cebab": cebab_part, "correction": correction_part}[part]()
        result[part]["command"] = f"python bench/label_free.py --parts {part}"
        RESULTS.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(relative_paths(result), indent=2))
        (RESULTS / "label_free.md").write_text(markdown(result))
        print(markdown(result), flush=True)


def markdown(result: dict) -> str:
    lines = ["# Concept bottlenecks without concept labels (all-MiniLM-L6-v2)", ""]
    if "sst2" in result:
        s = result["sst2"]
        lines += ["## SST-2 (GLUE dev as test; 3000 training rows, 2 epochs, seed 0)", "", f"Command: `{s['command']}`.", "",
                  "| model | test acc | test macro-F1 | dev acc | epochs | train+eval s |", "|---|---|---|---|---|---|"]
        for name in ("standard", "label-free"):
            r = s[name]
            lines.append(f"| {name} | {r['test']['accuracy']:.1%} | {r['test']['macro_f1']:.3f} | {r['dev']['accuracy']:.1%} | "
                         f"{r['epochs']} | {r['seconds']:.0f} |")
        gap = s["label-free"]["test"]["accuracy"] - s["standard"]["test"]["accuracy"]
        lines += ["", f"Label-free minus standard: {100 * gap:+.1f} points ({s['label-free']['concepts']} statements, "
                  "configs/sst2-label-free.yaml).", "", "The sparse label layer's path (elastic net, l1 share 0.5; the chosen point in bold):", "",
                  "| C | non-zero weights | dev acc |", "|---|---|---|"]
        best = max(s["label-free"]["path"], key=lambda p: p["dev_score"])
        for p in s["label-free"]["path"]:
            cells = [f"{p['C']:.3g}", str(p["nonzero_weights"]), f"{p['dev_score']:.1%}"]
            lines.append("| " + " | ".join(f"**{c}**" if p is best else c for c in cells) + " |")
        lines += ["", "What the chosen label layer reads per class (weight: the class logit's rise from no to yes; the 8 largest):", ""]
        for label, rows in s["label-free"]["label_layer"].items():
            lines.append(f"- class {label}: " + (", ".join(f"{r['concept']} ({r['weight']:+.2f})" for r in rows) or "none"))
        lines.append("")
    if "cebab" in result:
        c = result["cebab"]
        lf = c["label-free"]
        supervised = "".join(f"; the supervised {m} model: {c[f'supervised_{m}_test']['accuracy']:.1%} "
                             f"(macro-F1 {c[f'supervised_{m}_test']['macro_f1']:.3f})"
                             for m in ("joint", "sequential") if f"supervised_{m}_test" in c)
        lines += ["## CEBaB (test)", "", f"Command: `{c['command']}`.", "",
                  f"Label-free model (configs/cebab-label-free.yaml, no human concept label read; trained in two stages as "
                  f"the supervised sequential model is): task accuracy {lf['test']['accuracy']:.1%} "
                  f"(macro-F1 {lf['test']['macro_f1']:.3f}){supervised}.", "",
                  "Agreement with the human aspect labels, ROC AUC: raw MiniLM cosine of the first (plain) statement, of the "
                  "mean over the statements that stand for the label, and the trained concept layer's mean p(yes) over them.", "",
                  "| aspect | value | positives | raw, plain statement | raw, its statements | trained |", "|---|---|---|---|---|---|"]
        for a in c["agreement"]:
            lines.append(f"| {a['aspect']} | {a['value']} | {a['positives']} | {a['raw_plain']:.3f} | {a['raw']:.3f} | {a['trained']:.3f} |")
        means = {k: np.mean([a[k] for a in c["agreement"]]) for k in ("raw_plain", "raw", "trained")}
        lines += [f"| mean | | | {means['raw_plain']:.3f} | {means['raw']:.3f} | {means['trained']:.3f} |", ""]
    if "correction" in result:
        k = result["correction"]
        lines += ["## What ACC teaches the concept layer (CEBaB training texts)", "", f"Command: `{k['command']}`. ROC AUC against "
                  f"the human aspect labels of the {k['train_texts']} training texts: the raw scores, and the scores after ACC "
                  "(statements tied to other star ratings than the review's set to zero), the targets the concept layer learns.", "",
                  "| aspect | value | raw | after ACC |", "|---|---|---|---|"]
        lines += [f"| {a['aspect']} | {a['value']} | {a['raw']:.3f} | {a['corrected']:.3f} |" for a in k["agreement"]]
        lines += [f"| mean | | {np.mean([a['raw'] for a in k['agreement']]):.3f} | "
                  f"{np.mean([a['corrected'] for a in k['agreement']]):.3f} |", ""]
        if "share_by_rating" in k["agreement"][0]:
            ratings = list(k["agreement"][0]["share_by_rating"])
            lines += ["The share of training reviews of each rating with the aspect value (what a statement's tie to ratings "
                      "zeroes on the others):", "", "| aspect | value | " + " | ".join(f"{r} stars" for r in ratings) + " |",
                      "|---|---|" + "---|" * len(ratings)]
            lines += [f"| {a['aspect']} | {a['value']} | " + " | ".join(f"{a['share_by_rating'][r]:.0%}" for r in ratings) + " |"
                      for a in k["agreement"]]
            lines.append("")
    if "cache" in result:
        k = result["cache"]
        lines += ["## The score cache", "", f"Command: `{k['command']}`. Scoring {k['texts']} texts against {k['statements']} "
                  f"statements: {k['first_seconds']:.1f} s the first time, {k['second_seconds']:.2f} s the second "
                  f"(ratio {k['ratio']:.2%}).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
