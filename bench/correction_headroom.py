"""How much can correcting concepts to gold add on CEBaB? Diagnostics of a saved concept model:

- on train: how often its concepts are wrong at all (what training ever shows a correction
  fixing), and its task accuracy there;
- on dev and test: the rows with at least one wrong concept, the task accuracy on them, and on
  them after those concepts are corrected;
- the head room on the model's own representation: 5-fold cross-validated logistic regressions
  *fitted on the evaluated split itself* from the pooled vector, with and without the gold
  concept values appended (an upper bound a head trained on the training split cannot beat).
  For a black-box run (``standard``) only this part: what gold concepts could add to the
  representation of a model that reads no concept at all.

    python bench/correction_headroom.py [--run runs/bench-cebab-intcem]

Writes bench/results/correction_headroom.{json,md}, one section per run (a run measured again
replaces its section).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from common import relative_paths  # noqa: E402 (bench/ is on the path)
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from lucidlm.data import MISSING
from lucidlm.experiment import load_experiment_task, load_run
from lucidlm.models.base import ConceptModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


@torch.no_grad()
def pooled(model, split) -> np.ndarray:
    return torch.cat(
        [model.pooled(b["input_ids"], b["attention_mask"]) for b in model.encoder.loader(split, 64)]
    ).numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-cebab-intcem")
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    args.run = args.run.resolve()
    model, record = load_run(args.run)
    task = load_experiment_task(record["experiment"]["data"])
    result = {
        "run": str(args.run),
        "command": f"python bench/correction_headroom.py --run {args.run.relative_to(ROOT)}",
        "splits": {},
    }
    concept_model = isinstance(model, ConceptModel)
    for name in ("train", "dev", "test") if concept_model else ("dev", "test"):
        split = task.split(name)
        inferred = model.infer(split)
        right = inferred["label_logits"].argmax(1) == split.labels
        row = {
            "rows": len(split),
            "task_accuracy": float(right.mean()),
            "rows_with_a_wrong_concept": None,
            "accuracy_on_those_rows": None,
            "accuracy_on_those_rows_corrected": None,
        }
        if concept_model:
            predicted = np.stack([p.argmax(-1) for p in inferred["concept_probs"]], axis=1)
            recognised = predicted == split.concepts
            wrong = ~recognised & (split.concepts != MISSING)
            wrong_rows = wrong.any(1)
            corrected = inferred["gold_concept_label_logits"].argmax(1) == split.labels
            confidence = [p.max(1) for p in inferred["concept_probs"]]
            row["concepts"] = {
                c.name: {
                    "error_rate": float(wrong[:, k].sum() / (split.concepts[:, k] != MISSING).sum()),
                    "confidence_when_right": float(confidence[k][recognised[:, k]].mean()),
                    "confidence_when_wrong": float(confidence[k][wrong[:, k]].mean()) if wrong[:, k].any() else None,
                }
                for k, c in enumerate(model.spec.concepts)
            }
            row.update(
                rows_with_a_wrong_concept=float(wrong_rows.mean()),
                accuracy_on_those_rows=float(right[wrong_rows].mean()) if wrong_rows.any() else None,
                accuracy_on_those_rows_corrected=float(corrected[wrong_rows].mean()) if wrong_rows.any() else None,
            )
        if name != "train":
            features = pooled(model, split)
            gold = np.concatenate(
                [
                    np.eye(len(c.values))[np.where(split.concepts[:, k] >= 0, split.concepts[:, k], 0)]
                    for k, c in enumerate(task.spec.concepts)
                ],
                axis=1,
            )
            for strength in (0.01, 0.1):
                head = LogisticRegression(C=strength, max_iter=3000)
                alone = (cross_val_predict(head, features, split.labels, cv=5) == split.labels).mean()
                with_gold = (
                    cross_val_predict(head, np.concatenate([features, 3 * gold], 1), split.labels, cv=5) == split.labels
                ).mean()
                row[f"cv_C{strength}"] = {"pooled": float(alone), "pooled_and_gold_concepts": float(with_gold)}
        result["splits"][name] = row
        print(name, json.dumps(row), flush=True)
    results_file = RESULTS / "correction_headroom.json"
    runs = json.loads(results_file.read_text()) if results_file.is_file() else {}
    runs = {Path(runs["run"]).name: runs} if "run" in runs else runs  # a file of one run, as first written
    runs[args.run.name] = relative_paths(result)
    RESULTS.mkdir(parents=True, exist_ok=True)
    results_file.write_text(json.dumps(runs, indent=2))
    (RESULTS / "correction_headroom.md").write_text(markdown(runs))
    print(markdown(runs))


def markdown(runs: dict) -> str:
    lines = ["# Head room for concept corrections on CEBaB", ""]
    for result in runs.values():
        lines += run_markdown(result) + [""]
    lines += [
        "The CV heads are fitted on the evaluated split itself (5 folds): what a linear head on this representation "
        "could gain from gold concepts at best, not a model one could train on train."
    ]
    return "\n".join(lines) + "\n"


def run_markdown(result: dict) -> list[str]:
    lines = [
        f"## {Path(result['run']).name}",
        "",
        f"Command: `{result['command']}`.",
        "",
        "| split | rows | task acc | rows with a wrong concept | acc on them | acc on them, corrected | "
        "CV head on pooled (C 0.01 / 0.1) | CV head on pooled + gold concepts (C 0.01 / 0.1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["splits"].items():
        cv = [r.get(f"cv_C{c}") for c in (0.01, 0.1)]
        alone = " / ".join(f"{x['pooled']:.1%}" for x in cv) if cv[0] else "–"
        gold = " / ".join(f"{x['pooled_and_gold_concepts']:.1%}" for x in cv) if cv[0] else "–"
        fmt = lambda v: "–" if v is None else f"{v:.1%}"  # noqa: E731
        lines.append(
            f"| {name} | {r['rows']} | {fmt(r['task_accuracy'])} | {fmt(r['rows_with_a_wrong_concept'])} | "
            f"{fmt(r['accuracy_on_those_rows'])} | {fmt(r['accuracy_on_those_rows_corrected'])} | {alone} | {gold} |"
        )
    concepts = {name: r["concepts"] for name, r in result["splits"].items() if "concepts" in r}
    if concepts:
        lines += [
            "",
            "Per concept: error rate, and the mean probability of the predicted value when it is right / wrong.",
            "",
            "| split | " + " | ".join(next(iter(concepts.values()))) + " |",
            "|---|" + "---|" * len(next(iter(concepts.values()))),
        ]
        for name, per_concept in concepts.items():
            cells = [
                f"{c['error_rate']:.1%}, {c['confidence_when_right']:.2f} / "
                + ("–" if c["confidence_when_wrong"] is None else f"{c['confidence_when_wrong']:.2f}")
                for c in per_concept.values()
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
