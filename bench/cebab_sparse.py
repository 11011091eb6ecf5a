"""SparseCBM on CEBaB test (default backbone, train_exclusive, chosen on dev) at final sparsity
0.5 and 0.7, beside the joint and standard models of bench/cebab_bottleneck.py; mask density
per concept; and subnetwork intervention on concepts the model gets wrong, each rewiring setting
(score, p) on dev and on test, the one to report chosen on dev.

    python bench/cebab_sparse.py [--sparsity 0.5 0.7] [--granularity weight|neuron] [--interventions 200]
                                 [--fractions 0.1 0.2 0.3] [--scores saliency taylor] [--concept-layer embedding]
                                 [--intervention-loss-weight W] [--concept-loss-weight λ] [--reuse]
                                 [--value-correction-only]

``--reuse`` loads the runs saved by an earlier invocation and measures only the interventions
(the (score, p) pairs given; the others already in the results stay), and on the same pairs the
value correction (the concept set to gold by a value intervention); ``--value-correction-only``
measures only that.
Writes bench/results/cebab_sparse.{json,md}, merging with the rows already there.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import transformers
from common import random_intervention_rate, relative_paths  # noqa: E402 (bench/ is on the path)

from lucidlm import SubnetworkRewiring
from lucidlm.experiment import load_experiment_task, read_experiment, run_experiment
from lucidlm.masking import REWIRING_SCORES
from lucidlm.models import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def wrong_pairs(model, split, limit: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's concept predictions on ``split``, the (row, concept) pairs it gets wrong, and
    ``limit`` of those drawn with ``seed``: one inference pass for every setting measured on it."""
    predicted = np.stack([p.argmax(-1) for p in model.infer(split)["concept_probs"]], axis=1)
    wrong = np.argwhere(predicted != split.concepts)
    rng = np.random.default_rng(seed)
    return predicted, wrong, wrong[np.sort(rng.choice(len(wrong), min(limit, len(wrong)), replace=False))]


def subnetwork_interventions(model, split, split_name: str, pairs, fraction: float, score: str) -> dict:
    """On (row, concept) pairs whose concept prediction is wrong (``pairs``: ``wrong_pairs``'s):
    does rewiring the concept's subnetwork toward the gold value correct it, move the label, break
    other correct concepts?"""
    predicted, wrong, chosen = pairs
    corrected = broken = others = label_before = label_after = 0
    start = time.perf_counter()
    for row, k in chosen:
        concept = model.spec.concepts[k]
        rewiring = SubnetworkRewiring(concept.name, concept.values[split.concepts[row, k]], fraction, score=score)
        result = model.intervene(split.texts[row], rewiring)[0]
        corrected += result.after.concepts[concept.name].value == concept.values[split.concepts[row, k]]
        gold_label = model.spec.classes[split.labels[row]]
        label_before += result.before.label == gold_label
        label_after += result.after.label == gold_label
        for j, other in enumerate(model.spec.concepts):
            if j != k and predicted[row, j] == split.concepts[row, j]:
                others += 1
                broken += result.after.concepts[other.name].value != other.values[split.concepts[row, j]]
    n = len(chosen)
    return {
        "split": split_name,
        "pairs_wrong": int(len(wrong)),
        "pairs_intervened": n,
        "fraction": fraction,
        "score": score,
        "concepts_corrected": corrected / n,
        "task_accuracy_before": label_before / n,
        "task_accuracy_after": label_after / n,
        "other_correct_concepts_broken": broken / max(others, 1),
        "seconds_per_intervention": (time.perf_counter() - start) / n,
    }


def value_correction(model, split, pairs) -> float:
    """Task accuracy on the same (row, concept) pairs when the concept is set to its gold value by a
    value intervention instead: the correction a rewiring is measured against."""
    _, _, chosen = pairs
    right = 0
    for row, k in chosen:
        concept = model.spec.concepts[k]
        result = model.intervene(split.texts[row], {concept.name: concept.values[split.concepts[row, k]]})[0]
        right += result.after.label == model.spec.classes[split.labels[row]]
    return right / len(chosen)


def chosen_on_dev(measured: list[dict]) -> dict | None:
    """The rewiring setting (score, p) to report, read off dev: among the settings that correct at
    least half of the concepts, the one whose corrections help the label most (then the one that
    corrects most); when none reaches half, the one that corrects most."""
    dev = [m for m in measured if m["split"] == "dev"]
    enough = [m for m in dev if m["concepts_corrected"] >= 0.5]
    if enough:
        best = max(
            enough, key=lambda m: (m["task_accuracy_after"] - m["task_accuracy_before"], m["concepts_corrected"])
        )
    else:
        best = max(dev, key=lambda m: m["concepts_corrected"], default=None)
    return None if best is None else {"score": best["score"], "fraction": best["fraction"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", nargs="+", type=float, default=[0.7, 0.5])
    parser.add_argument("--interventions", type=int, default=200)
    parser.add_argument("--fractions", nargs="+", type=float, default=[0.1, 0.2, 0.3], help="p: the paper code's range")
    parser.add_argument(
        "--scores",
        nargs="+",
        choices=REWIRING_SCORES.names,
        default=REWIRING_SCORES.names,
        help="saliency |g⊙W| (docs/methods.md §2) and/or taylor (signed first-order)",
    )
    parser.add_argument("--granularity", choices=("weight", "neuron"), default="weight")
    parser.add_argument(
        "--concept-layer",
        choices=("scalar", "embedding"),
        default="scalar",
        help="embedding: concept embeddings (CEM) on each concept's subnetwork; rows named sparse-<s>-cem",
    )
    parser.add_argument(
        "--intervention-loss-weight",
        type=float,
        default=0.0,
        help="IntCEM's loss weight (with --concept-layer embedding); rows named sparse-<s>-intcem",
    )
    parser.add_argument(
        "--concept-loss-weight",
        type=float,
        default=1.0,
        help="λ in CE(y) + λ·Σ_k CE(c_k); rows named ...-concept<λ> unless 1",
    )
    parser.add_argument("--reuse", action="store_true", help="load the saved runs; measure the interventions only")
    parser.add_argument(
        "--value-correction-only",
        action="store_true",
        help="with --reuse: measure only the value correction on the pairs; the rewirings measured stay",
    )
    args = parser.parse_args()
    if args.value_correction_only and not args.reuse:
        parser.error("--value-correction-only measures saved runs: add --reuse")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    rows, earlier = {}, read_results()["sparse"]
    for sparsity in args.sparsity:
        weight = args.intervention_loss_weight
        name = (
            f"sparse-{sparsity}"
            + ("-neuron" if args.granularity == "neuron" else "")
            + (
                (f"-intcem{weight:g}" if weight != 1 else "-intcem")
                if weight
                else "-cem"
                if args.concept_layer == "embedding"
                else ""
            )
            + (f"-concept{args.concept_loss_weight:g}" if args.concept_loss_weight != 1 else "")
        )
        options = (
            (f" --concept-layer {args.concept_layer}" if args.concept_layer != "scalar" else "")
            + (f" --intervention-loss-weight {weight:g}" if weight else "")
            + (f" --concept-loss-weight {args.concept_loss_weight:g}" if args.concept_loss_weight != 1 else "")
        )
        experiment = read_experiment(
            ROOT / "configs" / "cebab-sparse.yaml", output_dir=ROOT / "runs" / f"bench-cebab-{name}"
        )
        experiment.model["sparsity"] = sparsity
        experiment.model["granularity"] = args.granularity
        experiment.model["concept_layer"] = args.concept_layer
        experiment.model["intervention_loss_weight"] = args.intervention_loss_weight
        experiment.model["concept_loss_weight"] = args.concept_loss_weight
        experiment.training.progress = False
        if args.reuse:
            model, row = load_pretrained(experiment.output_dir), dict(earlier[name])
        else:
            start = time.perf_counter()
            model, metrics = run_experiment(experiment)
            row = {
                "command": f"python bench/cebab_sparse.py --sparsity {sparsity} --granularity {args.granularity} "
                f"--interventions {args.interventions} --fractions {' '.join(map(str, args.fractions))}" + options,
                "test": metrics["test"],
                "dev": metrics["dev"],
                "train_seconds": time.perf_counter() - start,
                "mask_density": model.mask_density(),
                "target_density": 1 - sparsity,
                "jaccard": model.subnetwork_statistics()["jaccard"],
                "config": experiment.to_dict(),
            }
        task = load_experiment_task(experiment.data)
        settings = [] if args.value_correction_only else [(score, p) for score in args.scores for p in args.fractions]
        # each setting on dev (where the one to report is chosen) and on test
        pairs = {part: wrong_pairs(model, task.split(part), args.interventions) for part in ("dev", "test")}
        measured = [
            subnetwork_interventions(model, task.split(part), part, pairs[part], p, score)
            for part in ("dev", "test")
            for score, p in settings
        ]
        kept = [m for m in row.get("subnetwork_intervention", []) if (m["score"], m["fraction"]) not in settings]
        row["subnetwork_intervention"] = kept + measured  # --reuse keeps the (score, p) it does not measure again
        row["rewiring_chosen_on_dev"] = chosen_on_dev(row["subnetwork_intervention"])
        row["value_correction"] = {
            part: value_correction(model, task.split(part), pairs[part]) for part in ("dev", "test")
        }
        if args.value_correction_only:
            row["value_correction_command"] = (
                f"python bench/cebab_sparse.py --sparsity {sparsity} --granularity {args.granularity} "
                f"--interventions {args.interventions}" + options + " --reuse --value-correction-only"
            )
        else:
            row.pop("value_correction_command", None)
            row["interventions_command"] = (
                f"python bench/cebab_sparse.py --sparsity {sparsity} --granularity {args.granularity} "
                f"--interventions {args.interventions} --fractions {' '.join(map(str, args.fractions))} "
                f"--scores {' '.join(args.scores)}" + options + (" --reuse" if args.reuse else "")
            )
        rows[name] = row
        print(json.dumps({k: v for k, v in row.items() if k != "config"}, indent=1), flush=True)
        write_results(rows)  # after each run, so a finished run is never lost


def read_results() -> dict:
    results_file = RESULTS / "cebab_sparse.json"
    earlier = json.loads(results_file.read_text()) if results_file.is_file() else {"sparse": {}}
    for row in earlier["sparse"].values():  # rows from before each row carried its command
        row.setdefault("command", earlier.get("command"))
        if isinstance(row.get("subnetwork_intervention"), dict):
            row["subnetwork_intervention"] = [row["subnetwork_intervention"]]
        for measured in row.get("subnetwork_intervention", []):
            measured.setdefault("score", "saliency")  # from before the taylor score
            measured.setdefault("split", "test")  # from before dev chose the setting
            if "pairs_wrong_in_test" in measured:
                measured["pairs_wrong"] = measured.pop("pairs_wrong_in_test")
    return earlier


def write_results(rows: dict) -> None:
    baseline_file = RESULTS / "cebab_bottleneck.json"
    baselines = json.loads(baseline_file.read_text())["modes"] if baseline_file.is_file() else {}
    earlier = read_results()
    result = {
        "sparse": {**earlier["sparse"], **rows},
        "baselines": {
            m: {"test": baselines[m]["test"], "config": baselines[m]["config"]}
            for m in ("standard", "joint", "cem", "intcem")
            if m in baselines
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cebab_sparse.json").write_text(json.dumps(relative_paths(result), indent=2))
    (RESULTS / "cebab_sparse.md").write_text(markdown(result))
    print(markdown(result), flush=True)


def markdown(result: dict) -> str:
    lines = [
        "# SparseCBM on CEBaB test (all-MiniLM-L6-v2, train_exclusive, chosen on dev)",
        "",
        "Standard and joint rows from `bench/cebab_bottleneck.py`; the command of each sparse row below.",
        "",
        "RandInt: `random_intervention_rate`, the probability with which each concept is replaced by its gold "
        "value while the label head trains.",
        "",
        "Gold concepts: the concepts predicted wrong set to their gold value (a concept-value correction), the others left as predicted.",
        "",
        "| model | concept layer | RandInt | task acc | task macro-F1 | concept acc | concept macro-F1 | task acc, gold concepts | mask density per concept (target) | train+eval s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    models = {**{m: r for m, r in result["baselines"].items()}, **result["sparse"]}
    for name, row in models.items():
        t, c = row["test"]["task"], row["test"].get("concepts")
        density = ", ".join(f"{k} {v:.3f}" for k, v in row.get("mask_density", {}).items())
        target = f" ({row['target_density']:.2f})" if "target_density" in row else ""
        seconds = f"{row['train_seconds']:.0f}" if "train_seconds" in row else "–"
        randint = random_intervention_rate(row) if "config" in row else "–"
        layer = row["config"]["model"].get("concept_layer", "scalar") if c else "–"
        gold = row["test"].get("task_gold_concepts")
        gold = f"{gold['accuracy']:.1%}" if gold else "–"
        lines.append(
            f"| {name} | {layer} | {randint} | {t['accuracy']:.1%} | {t['macro_f1']:.3f} | "
            f"{c['accuracy']:.1%} | {c['macro_f1']:.3f} | {gold} | {density}{target} | {seconds} |"
            if c
            else f"| {name} | – | {randint} | {t['accuracy']:.1%} | {t['macro_f1']:.3f} | – | – | – | – | – |"
        )
    lines += [
        "",
        "Subnetwork intervention on (row, concept) pairs predicted wrong, given the gold value; the setting "
        "to report is chosen on dev (`chosen_on_dev`: among the settings that correct at least half of the concepts, "
        "the one whose corrections help the label most), marked ✓ on its test row. Value correction: the task accuracy "
        "on the same pairs when the concept is set to gold by a value intervention instead.",
        "",
        "| model | split | pairs | score | p | concepts corrected | task acc before → after | value correction | "
        "other correct concepts broken |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["sparse"].items():
        choice = row.get("rewiring_chosen_on_dev")
        for s in sorted(row["subnetwork_intervention"], key=lambda s: (s["split"] != "dev", s["score"], s["fraction"])):
            mark = " ✓" if s["split"] == "test" and choice == {"score": s["score"], "fraction": s["fraction"]} else ""
            value = row.get("value_correction", {}).get(s["split"])
            lines.append(
                f"| {name} | {s['split']}{mark} | {s['pairs_intervened']} of {s['pairs_wrong']} | {s['score']} | "
                f"{s['fraction']} | {s['concepts_corrected']:.1%} | "
                f"{s['task_accuracy_before']:.1%} → {s['task_accuracy_after']:.1%} | "
                f"{'–' if value is None else f'{value:.1%}'} | {s['other_correct_concepts_broken']:.1%} |"
            )
    lines += [
        "",
        "score: saliency = |g ⊙ W| (docs/methods.md §2); taylor = −g, the signed first-order change of the concept's loss.",
        "",
        "Commands:",
        "",
    ]
    for name, row in result["sparse"].items():
        lines.append(f"- {name}: `{row['command']}`")
        if row.get("interventions_command", row["command"]) != row["command"]:
            lines.append(f"  - its interventions: `{row['interventions_command']}`")
        if row.get("value_correction_command"):
            lines.append(f"  - its value correction: `{row['value_correction_command']}`")
        if row.get("note"):
            lines.append(f"  - {row['note']}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
