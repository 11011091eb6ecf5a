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
- The elastic-net path's convergence (no training, seconds): on a synthetic label-layer input shaped
  like SST-2's soft_targets one (40 statements, two correlated logits each, one common factor, 3000
  rows), the path's non-zero weights, saga's epochs and its distance from the optimum at the default
  tolerance and at tight ones: whether a support that goes up and down along C is the solver's
  early stop or the penalised optimum itself.

    python bench/label_free.py [--parts cache sst2 cebab correction path] [--objective soft_targets|cos3]

``--objective`` sets the label-free configs' ``model.concept_objective`` (docs/methods.md §6.5, §6.8):
``soft_targets`` (the configs' own, today's default) or ``cos3`` (CB-LLM's cubed cosine, one ReLU
activation per statement); the sst2 and cebab parts of another objective than soft_targets are kept
under ``sst2-<objective>`` and ``cebab-<objective>``, beside soft_targets' (the SST-2 standard model
is trained once, with soft_targets' part, and reused).

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
from common import relative_paths  # noqa: E402 (bench/ is on the path)
from sklearn.metrics import roc_auc_score

from lucidlm.data.automatic_concepts import concept_scores, corrected_scores, read_statements
from lucidlm.evaluation.concept_set import label_layer_weights
from lucidlm.experiment import automatic_concept_sources, load_experiment_task, read_experiment, run_experiment
from lucidlm.models.label_free import CONCEPT_OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
PARTS = ("cache", "sst2", "cebab", "correction", "path")
DEFAULT_OBJECTIVE = "soft_targets"


def train(config: str, name: str, objective: str | None = None) -> tuple[object, dict]:
    """Train and evaluate a config; ``objective``: its ``model.concept_objective`` set so."""
    suffix = f"-{objective}" if objective and objective != DEFAULT_OBJECTIVE else ""
    experiment = read_experiment(ROOT / "configs" / config, output_dir=ROOT / "runs" / f"bench-{name}{suffix}")
    if objective is not None and objective != experiment.model.get("concept_objective", DEFAULT_OBJECTIVE):
        experiment.model["concept_objective"] = objective
        experiment.model.pop("concept_layer", None)  # the objective's own (cos3: statement)
    experiment.training.progress = False
    start = time.perf_counter()
    model, metrics = run_experiment(experiment)
    return model, {
        "config": f"configs/{config}",
        "concept_objective": model.summary().get("concept_objective"),
        "test": metrics["test"]["task"],
        "dev": metrics["dev"]["task"],
        "seconds": time.perf_counter() - start,
        "epochs": sum(1 for r in model.training_history if "epoch" in r),
    }


def part_key(part: str, objective: str) -> str:
    return part if objective == DEFAULT_OBJECTIVE or part in ("cache", "correction", "path") else f"{part}-{objective}"


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
    return {
        "texts": len(texts),
        "statements": len(statements),
        "first_seconds": times[0],
        "second_seconds": times[1],
        "ratio": times[1] / times[0],
    }


def label_head_record(model) -> dict:
    """The c→y stage's record: the path (per C: non-zero weights, dev score, saga's iterations,
    converged, optimality) and the solver's settings."""
    head = next(r for r in reversed(model.training_history) if r.get("stage") == "c→y")
    return {
        "path": head["path"],
        "label_head": {k: head.get(k) for k in ("solver", "tol", "max_iter", "converged", "features")},
    }


def sst2_part(objective: str = DEFAULT_OBJECTIVE, earlier: dict | None = None) -> dict:
    if objective == DEFAULT_OBJECTIVE or not (earlier or {}).get("sst2", {}).get("standard"):
        _, standard = train("sst2-standard.yaml", "sst2-standard")
    else:  # the same standard model: soft_targets' part trained it
        standard = earlier["sst2"]["standard"]
    model, label_free = train("sst2-label-free.yaml", "sst2-label-free", objective)
    label_free.update(
        **label_head_record(model),
        concepts=len(model.spec.concepts),
        label_layer={c: rows[:8] for c, rows in label_layer_weights(model).items()},
    )
    return {"standard": standard, "label-free": label_free}


def cebab_part(objective: str = DEFAULT_OBJECTIVE, earlier: dict | None = None) -> dict:
    model, row = train("cebab-label-free.yaml", "cebab-label-free", objective)
    data = read_experiment(ROOT / "configs" / "cebab-label-free.yaml").data
    statements, human = automatic_concept_sources(data, "test")
    test = load_experiment_task({k: v for k, v in data.items() if k != "automatic_concepts"}).test
    raw = concept_scores(test.texts, statements)
    logits = model.infer(load_experiment_task(data).test)["concept_logits"]
    trained = np.stack([1.0 / (1.0 + np.exp(x[:, 0] - x[:, 1])) for x in logits], axis=1)
    agreement = []
    for (concept, value), members in statement_groups(statements).items():
        truth = human[concept] == value
        agreement.append(
            {
                "aspect": concept,
                "value": value,
                "statements": [statements[j].text for j in members],
                "positives": int(truth.sum()),
                "raw_plain": float(roc_auc_score(truth, raw[:, members[0]])),  # one plain statement
                "raw": float(roc_auc_score(truth, raw[:, members].mean(1))),
                "trained": float(roc_auc_score(truth, trained[:, members].mean(1))),
            }
        )
    return {"label-free": {**row, **label_head_record(model)}, **supervised_rows(), "agreement": agreement}


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
        rows.append(
            {
                "aspect": concept,
                "value": value,
                "raw": float(roc_auc_score(truth, raw[:, members].mean(1))),
                "corrected": float(roc_auc_score(truth, corrected[:, members].mean(1))),
                # how often a review of each rating has this aspect value: what a tie may rule out
                "share_by_rating": {
                    c: float(truth[task.train.labels == i].mean()) for i, c in enumerate(task.spec.classes)
                },
            }
        )
    return {"train_texts": len(task.train), "agreement": rows}


def synthetic_label_input(rows: int = 3000, statements: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Standardised features like a soft_targets label layer's input: per statement two noisy
    logits of opposite sign over one score; all scores share one factor (the sentiment), which
    with noise decides the binary label."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=(rows, 1))
    scores = 0.9 * factor * rng.choice([-1, 1], size=statements) + 0.45 * rng.normal(size=(rows, statements))
    labels = (factor[:, 0] + 0.7 * rng.normal(size=rows) > 0).astype(int)
    x = np.concatenate(
        [
            2 * scores + 0.3 * rng.normal(size=(rows, statements)) + 1,
            -1.5 * scores + 0.3 * rng.normal(size=(rows, statements)),
        ],
        axis=1,
    )
    return (x - x.mean(0)) / x.std(0), labels


def path_part() -> dict:
    from lucidlm.models.label_head import ELASTIC_MAX_ITER, ELASTIC_PATH, ELASTIC_TOL, fit_logistic

    x, y = synthetic_label_input()
    runs = []
    for tol, max_iter in ((ELASTIC_TOL, ELASTIC_MAX_ITER), (1e-4, 10000), (1e-6, 100000)):
        start, points = time.perf_counter(), []
        for c in ELASTIC_PATH:
            head, record = fit_logistic(x, y, float(c), l1_ratio=0.5, tol=tol, max_iter=max_iter)
            points.append({"C": float(c), "nonzero_weights": int((head.coef_ != 0).sum()), **record})
        runs.append({"tol": tol, "max_iter": max_iter, "seconds": time.perf_counter() - start, "path": points})
    return {"rows": len(y), "features": x.shape[1], "l1_ratio": 0.5, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument(
        "--objective",
        choices=CONCEPT_OBJECTIVES.names,
        default=DEFAULT_OBJECTIVE,
        help="the label-free model's concept_objective (sst2 and cebab parts)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    results_file = RESULTS / "label_free.json"
    result = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for part in args.parts:
        key = part_key(part, args.objective)
        if part in ("sst2", "cebab"):
            result[key] = {"sst2": sst2_part, "cebab": cebab_part}[part](args.objective, result)
        else:
            result[key] = {"cache": cache_part, "correction": correction_part, "path": path_part}[part]()
        objective = f" --objective {args.objective}" if key != part else ""
        result[key]["command"] = f"python bench/label_free.py --parts {part}{objective}"
        RESULTS.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(relative_paths(result), indent=2))
        (RESULTS / "label_free.md").write_text(markdown(result))
        print(markdown(result), flush=True)


def markdown(result: dict) -> str:
    lines = ["# Concept bottlenecks without concept labels (all-MiniLM-L6-v2)", ""]
    for key in [k for k in result if k == "sst2" or k.startswith("sst2-")]:
        lines += sst2_markdown(result[key], objective_of(key))
    for key in [k for k in result if k == "cebab" or k.startswith("cebab-")]:
        lines += cebab_markdown(result[key], objective_of(key))
    if "correction" in result:
        k = result["correction"]
        lines += [
            "## What ACC teaches the concept layer (CEBaB training texts)",
            "",
            f"Command: `{k['command']}`. ROC AUC against "
            f"the human aspect labels of the {k['train_texts']} training texts: the raw scores, and the scores after ACC "
            "(statements tied to other star ratings than the review's set to zero), the targets the concept layer learns.",
            "",
            "| aspect | value | raw | after ACC |",
            "|---|---|---|---|",
        ]
        lines += [f"| {a['aspect']} | {a['value']} | {a['raw']:.3f} | {a['corrected']:.3f} |" for a in k["agreement"]]
        lines += [
            f"| mean | | {np.mean([a['raw'] for a in k['agreement']]):.3f} | "
            f"{np.mean([a['corrected'] for a in k['agreement']]):.3f} |",
            "",
        ]
        if "share_by_rating" in k["agreement"][0]:
            ratings = list(k["agreement"][0]["share_by_rating"])
            lines += [
                "The share of training reviews of each rating with the aspect value (what a statement's tie to ratings "
                "zeroes on the others):",
                "",
                "| aspect | value | " + " | ".join(f"{r} stars" for r in ratings) + " |",
                "|---|---|" + "---|" * len(ratings),
            ]
            lines += [
                f"| {a['aspect']} | {a['value']} | "
                + " | ".join(f"{a['share_by_rating'][r]:.0%}" for r in ratings)
                + " |"
                for a in k["agreement"]
            ]
            lines.append("")
    if "path" in result:
        k = result["path"]
        lines += [
            "## Does the elastic-net path converge? (synthetic)",
            "",
            f"Command: `{k['command']}`. {k['rows']} rows, "
            f"{k['features']} standardised features (40 statements, two correlated logits each, one common factor), "
            f"l1 share {k['l1_ratio']}, the label layer's path of C. Per C: non-zero weights / saga's epochs; "
            "optimality: the largest violation of the optimum's conditions relative to the gradient at zero weights.",
            "",
            "| C | " + " | ".join(f"tol {r['tol']:g} (max {r['max_iter']})" for r in k["runs"]) + " |",
            "|---|" + "---|" * len(k["runs"]),
        ]
        for i, c in enumerate(r["C"] for r in k["runs"][0]["path"]):
            cells = [
                f"{p['nonzero_weights']} / {p['n_iter']}{'' if p['converged'] else ' (not converged)'}, "
                f"{p['optimality']:.0e}"
                for p in (r["path"][i] for r in k["runs"])
            ]
            lines.append(f"| {c:.3g} | " + " | ".join(cells) + " |")
        lines += ["| seconds | " + " | ".join(f"{r['seconds']:.1f}" for r in k["runs"]) + " |", ""]
    if "cache" in result:
        k = result["cache"]
        lines += [
            "## The score cache",
            "",
            f"Command: `{k['command']}`. Scoring {k['texts']} texts against {k['statements']} "
            f"statements: {k['first_seconds']:.1f} s the first time, {k['second_seconds']:.2f} s the second "
            f"(ratio {k['ratio']:.2%}).",
            "",
        ]
    return "\n".join(lines)


def objective_of(key: str) -> str:
    return key.split("-", 1)[1] if "-" in key else DEFAULT_OBJECTIVE


def path_markdown(path: list[dict], record: dict | None) -> list[str]:
    """The label layer's path, the chosen point in bold, with saga's iterations and convergence
    where the run recorded them."""
    solver = record or {}
    recorded = "n_iter" in path[0]
    lines = [
        "The sparse label layer's path (elastic net, l1 share 0.5"
        + (f"; saga, tol {solver['tol']:g}, at most {solver['max_iter']} epochs" if solver.get("tol") else "")
        + "; the chosen point in bold"
        + (
            "; optimality: the largest violation of the optimum's conditions, relative to the gradient at zero weights"
            if recorded
            else ""
        )
        + "):",
        "",
    ]
    lines += (
        ["| C | non-zero weights | dev acc | epochs | converged | optimality |", "|---|---|---|---|---|---|"]
        if recorded
        else ["| C | non-zero weights | dev acc |", "|---|---|---|"]
    )
    best = max(path, key=lambda p: p["dev_score"])
    for p in path:
        cells = [f"{p['C']:.3g}", str(p["nonzero_weights"]), f"{p['dev_score']:.1%}"]
        if recorded:
            cells += [str(p["n_iter"]), "yes" if p["converged"] else "**no**", f"{p['optimality']:.1e}"]
        lines.append("| " + " | ".join(f"**{c}**" if p is best else c for c in cells) + " |")
    return lines + [""]


def sst2_markdown(s: dict, objective: str) -> list[str]:
    lf = s["label-free"]
    lines = [
        f"## SST-2 (GLUE dev as test; 3000 training rows, 2 epochs, seed 0; concept objective {objective})",
        "",
        f"Command: `{s['command']}`.",
        "",
        "| model | concept objective | test acc | test macro-F1 | dev acc | epochs | train+eval s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("standard", "label-free"):
        r = s[name]
        lines.append(
            f"| {name} | {objective if name == 'label-free' else '–'} | {r['test']['accuracy']:.1%} | "
            f"{r['test']['macro_f1']:.3f} | {r['dev']['accuracy']:.1%} | {r['epochs']} | {r['seconds']:.0f} |"
        )
    gap = lf["test"]["accuracy"] - s["standard"]["test"]["accuracy"]
    lines += [
        "",
        f"Label-free minus standard: {100 * gap:+.1f} points ({lf['concepts']} statements, "
        f"configs/sst2-label-free.yaml, concept_objective {objective}).",
        "",
    ]
    lines += path_markdown(lf["path"], lf.get("label_head"))
    unit = "per unit of its activation" if objective == "cos3" else "the class logit's rise from no to yes"
    lines += [f"What the chosen label layer reads per class (weight: {unit}; the 8 largest):", ""]
    for label, rows in lf["label_layer"].items():
        lines.append(f"- class {label}: " + (", ".join(f"{r['concept']} ({r['weight']:+.2f})" for r in rows) or "none"))
    return lines + [""]


def cebab_markdown(c: dict, objective: str) -> list[str]:
    lf = c["label-free"]
    supervised = "".join(
        f"; the supervised {m} model: {c[f'supervised_{m}_test']['accuracy']:.1%} "
        f"(macro-F1 {c[f'supervised_{m}_test']['macro_f1']:.3f})"
        for m in ("joint", "sequential")
        if f"supervised_{m}_test" in c
    )
    lines = [
        f"## CEBaB (test; concept objective {objective})",
        "",
        f"Command: `{c['command']}`.",
        "",
        f"Label-free model (configs/cebab-label-free.yaml, concept_objective {objective}, no human concept label read; "
        f"trained in two stages as the supervised sequential model is): task accuracy {lf['test']['accuracy']:.1%} "
        f"(macro-F1 {lf['test']['macro_f1']:.3f}){supervised}.",
        "",
        "Agreement with the human aspect labels, ROC AUC: raw MiniLM cosine of the first (plain) statement, of the "
        "mean over the statements that stand for the label, and the trained concept layer's mean p(yes) over them.",
        "",
        "| aspect | value | positives | raw, plain statement | raw, its statements | trained |",
        "|---|---|---|---|---|---|",
    ]
    for a in c["agreement"]:
        lines.append(
            f"| {a['aspect']} | {a['value']} | {a['positives']} | {a['raw_plain']:.3f} | {a['raw']:.3f} | {a['trained']:.3f} |"
        )
    means = {k: np.mean([a[k] for a in c["agreement"]]) for k in ("raw_plain", "raw", "trained")}
    lines += [f"| mean | | | {means['raw_plain']:.3f} | {means['raw']:.3f} | {means['trained']:.3f} |", ""]
    if lf.get("path"):
        lines += path_markdown(lf["path"], lf.get("label_head"))
    return lines


if __name__ == "__main__":
    main()
