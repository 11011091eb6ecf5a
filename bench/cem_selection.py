"""Choosing the concept-embedding model's options on CEBaB dev: variants of a concept-embedding
config (and its baselines), each trained with the same epochs and seeds, run side by side in
worker processes (a GPU machine runs many at once).

    python bench/cem_selection.py [--sweep cebab|cebab-augmented] [--variants intcem "dropout 0.3" ...]
                                  [--seeds 0 1] [--jobs 4] [--time-limit SECONDS] [--data-root ../shared/data]

Sweeps: ``cebab``, variants of configs/cebab-intcem.yaml on the four human-labelled aspects;
``cebab-augmented``, variants of configs/cebab-intcem-augmented.yaml as it stands on C3M's 13
concepts, against configs/cebab-standard-augmented.yaml. For each run: dev and test task
accuracy, concept accuracy, and the correction gain (task accuracy with the wrongly predicted
concepts set to gold, minus without). The choice reads dev only (rule in ``chosen``); test is
printed beside it so that the choice can be checked, never made, on it. Writes
bench/results/cem_selection[_augmented].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from common import paired_difference, signed_points  # noqa: E402 (bench/ is on the path)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

# name: (config under configs/, overrides "section.option": value)
VARIANTS = {
    "standard": ("cebab-standard", {}),
    "joint": ("cebab-joint", {}),
    "intcem": ("cebab-intcem", {}),
    "dropout 0.3": ("cebab-intcem", {"model.dropout": 0.3}),
    "dropout 0.5": ("cebab-intcem", {"model.dropout": 0.5}),
    "m 4": ("cebab-intcem", {"model.concept_embedding_size": 4}),
    "m 64": ("cebab-intcem", {"model.concept_embedding_size": 64}),
    "IntCEM weight 5": ("cebab-intcem", {"model.intervention_loss_weight": 5.0}),
    "RandInt 0.5": ("cebab-intcem", {"model.random_intervention_rate": 0.5}),
    "concept weight 3": ("cebab-intcem", {"model.concept_loss_weight": 3.0}),
    "concept weight 0.3": ("cebab-intcem", {"model.concept_loss_weight": 0.3}),
    "random policy": ("cebab-intcem", {"model.intervention_policy": "random"}),
    "lr 5e-5": ("cebab-intcem", {"training.learning_rate": 5e-5}),
    "10 epochs": ("cebab-intcem", {"training.epochs": 10, "training.patience": 3}),
    "dropout 0.3, IntCEM weight 3": ("cebab-intcem", {"model.dropout": 0.3, "model.intervention_loss_weight": 3.0}),
    "holdout 0.1": ("cebab-intcem", {"model.intervention_holdout": 0.1}),
    "IntCEM weight 10": ("cebab-intcem", {"model.intervention_loss_weight": 10.0}),
    "IntCEM weight 5, dropout 0.5": ("cebab-intcem", {"model.intervention_loss_weight": 5.0, "model.dropout": 0.5}),
    "IntCEM weight 5, concept weight 2": (
        "cebab-intcem",
        {"model.intervention_loss_weight": 5.0, "model.concept_loss_weight": 2.0},
    ),
}
# What the intcem variants start from: configs/cebab-intcem.yaml with the weights it had before
# this selection chose its present ones, so that each name keeps its meaning.
STARTING_POINT = {"model.intervention_loss_weight": 1.0, "model.concept_loss_weight": 1.0}

# The 13-concept sweep: each variant changes configs/cebab-intcem-augmented.yaml as it stands
# (RandInt 0.08, λ 0.6, dropout 0.5, IntCEM weight 5, m 16, learning rates 1e-4 and 1e-2).
VARIANTS_AUGMENTED = {"standard": ("cebab-standard-augmented", {})} | {
    name: ("cebab-intcem-augmented", overrides)
    for name, overrides in {
        "config": {},
        "RandInt 0.25": {"model.random_intervention_rate": 0.25},
        "concept weight 0.3": {"model.concept_loss_weight": 0.3},
        "concept weight 1.2": {"model.concept_loss_weight": 1.2},
        "m 8": {"model.concept_embedding_size": 8},
        "m 32": {"model.concept_embedding_size": 32},
        "dropout 0.3": {"model.dropout": 0.3},
        "dropout 0.7": {"model.dropout": 0.7},
        "IntCEM weight 2": {"model.intervention_loss_weight": 2.0},
        "IntCEM weight 10": {"model.intervention_loss_weight": 10.0},
        "head lr 3e-3": {"training.head_learning_rate": 3e-3},
        "head lr 3e-2": {"training.head_learning_rate": 3e-2},
        "lr 1.5e-4": {"training.learning_rate": 1.5e-4},
        "warmup 0": {"training.warmup_ratio": 0.0},
        "weight decay 0.1": {"training.weight_decay": 0.1},
        "pooling cls": {"model.pooling": "cls"},
        "batch 32": {"training.batch_size": 32},
    }.items()
}


@dataclass(frozen=True)
class Sweep:
    variants: dict
    concept_config: str  # the config whose variants compete; the others are baselines
    starting_point: dict  # overrides under every variant of concept_config
    data: str  # for the title
    results: str  # file name under bench/results, without suffix
    explanation: str  # what each row changes, for the markdown


SWEEPS = {
    "cebab": Sweep(
        VARIANTS,
        "cebab-intcem",
        STARTING_POINT,
        "CEBaB",
        "cem_selection",
        "Every variant changes configs/cebab-intcem.yaml with IntCEM weight 1 and concept weight 1, its "
        "weights before this selection (standard, joint: their own configs). IntCEM here: "
        "intervention_objective sampled_horizon, docs/methods.md §6.2's simplification of IntCEM.",
    ),
    "cebab-augmented": Sweep(
        VARIANTS_AUGMENTED,
        "cebab-intcem-augmented",
        {},
        "CEBaB with C3M's 13 concepts",
        "cem_selection_augmented",
        "Every variant changes configs/cebab-intcem-augmented.yaml as it stands (row 'config'); "
        "standard: configs/cebab-standard-augmented.yaml. The pick below is a candidate: the config "
        "changes only if the rule also picks it over seeds 0-2 on this repository's CPU rows "
        "(bench/results/cebab_bottleneck.md), where the config was chosen. IntCEM here: "
        "intervention_objective sampled_horizon, docs/methods.md §6.2's simplification of IntCEM.",
    ),
}
# The rule of the choice, on dev only: among the concept-embedding variants whose mean dev task
# accuracy is within ACCURACY_SLACK of the standard model's and whose concept accuracy reaches
# CONCEPT_FLOOR, the highest mean dev correction gain.
ACCURACY_SLACK = 0.005
CONCEPT_FLOOR = 0.86


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name).strip("-")


def train_one(sweep_name: str, name: str, seed: int, data_root: str, threads: int) -> dict:
    """One run in a worker process; its figures, or the error that stopped it."""
    torch.set_num_threads(threads)
    import transformers
    from common import set_options  # bench/ is on the path

    from lucidlm.experiment import read_experiment, run_experiment

    transformers.utils.logging.set_verbosity_error()
    sweep = SWEEPS[sweep_name]
    config, overrides = sweep.variants[name]
    folder = ROOT / "runs" / slug(sweep.results) / f"{slug(name)}-seed{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    try:
        experiment = read_experiment(ROOT / "configs" / f"{config}.yaml", output_dir=folder)
        experiment.data["path"] = str(Path(data_root) / experiment.data["source"])
        set_options(experiment, {**sweep.starting_point, **overrides} if config == sweep.concept_config else overrides)
        experiment.training.seed = seed
        experiment.training.progress = False
        _, metrics = run_experiment(experiment)
    except Exception:
        return {"variant": name, "seed": seed, "error": traceback.format_exc()}
    row = {"variant": name, "seed": seed, "seconds": time.perf_counter() - start}
    for split in ("dev", "test"):
        m = metrics[split]
        row[split] = {
            "task_accuracy": m["task"]["accuracy"],
            "concept_accuracy": m["concepts"]["accuracy"] if "concepts" in m else None,
            "correction_gain": (
                m["task_gold_concepts"]["accuracy"] - m["task"]["accuracy"] if "task_gold_concepts" in m else None
            ),
        }
    return row


def summary(sweep: Sweep, runs: list[dict]) -> dict[str, dict]:
    """Per variant, the mean over its seeds of each figure."""
    out = {}
    for name in sweep.variants:
        done = [r for r in runs if r["variant"] == name and "error" not in r]
        if not done:
            continue
        out[name] = {"seeds": sorted(r["seed"] for r in done)}
        for split in ("dev", "test"):
            for figure in ("task_accuracy", "concept_accuracy", "correction_gain"):
                values = [r[split][figure] for r in done]
                out[name][f"{split}_{figure}"] = None if None in values else float(np.mean(values))
    return out


def chosen(sweep: Sweep, means: dict[str, dict]) -> str | None:
    if "standard" not in means:
        return None
    floor = means["standard"]["dev_task_accuracy"] - ACCURACY_SLACK
    eligible = [
        n
        for n, m in means.items()
        if sweep.variants[n][0] == sweep.concept_config
        and m["dev_task_accuracy"] >= floor
        and m["dev_concept_accuracy"] >= CONCEPT_FLOOR
    ]
    return max(eligible, key=lambda n: means[n]["dev_correction_gain"], default=None)


def paired_test_difference(runs: list[dict], name: str) -> tuple[float, float] | None:
    """Test task accuracy of variant ``name`` minus the standard model's on the same seeds: the
    mean and its standard error (None below two shared seeds)."""
    done = {(r["variant"], r["seed"]): r["test"]["task_accuracy"] for r in runs if "error" not in r}
    return paired_difference(
        [done[name, s] - done["standard", s] for (v, s) in done if v == name and ("standard", s) in done]
    )


def machine() -> dict:
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"platform": platform.platform(), "torch": torch.__version__, "cpus": os.cpu_count(), "device": device}


def write_results(sweep: Sweep, runs: list[dict], command: str, note: str | None = None) -> None:
    """Merged into the results file: the runs made now replace earlier runs of the same variant
    and seed, when the machine is the same kind; others stay."""
    previous, commands = RESULTS / f"{sweep.results}.json", [command]
    if previous.is_file():
        earlier = json.loads(previous.read_text())
        note = note or earlier.get("note")
        if earlier["machine"]["device"] == machine()["device"]:
            made = {(r["variant"], r["seed"]) for r in runs}
            runs = [r for r in earlier["runs"] if (r["variant"], r["seed"]) not in made] + runs
            commands = [c for c in earlier["commands"] if c != command] + commands
    runs = sorted(runs, key=lambda r: (list(sweep.variants).index(r["variant"]), r["seed"]))
    means = summary(sweep, runs)
    result = {
        "commands": commands,
        "machine": machine(),
        "note": note,
        "runs": runs,
        "means": means,
        "chosen": chosen(sweep, means),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{sweep.results}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{sweep.results}.md").write_text(markdown(sweep, result))


def markdown(sweep: Sweep, result: dict) -> str:
    def cell(value, points=False):
        if value is None:
            return "–"
        return signed_points(value) if points else f"{value:.1%}"

    m = result["machine"]
    lines = [
        f"# Concept-embedding options chosen on dev, {sweep.data} ({m['device']}, torch {m['torch']})",
        "",
        "Commands: "
        + ", ".join(f"`{c}`" for c in result["commands"])
        + ". Each row: the mean over the seeds shown; correction gain: task accuracy "
        "with the wrongly predicted concepts set to gold minus without, in points. "
        + sweep.explanation
        + (f" {result['note']}" if result.get("note") else ""),
        "",
        "| variant | seeds | dev task acc | dev concept acc | dev correction gain | test task acc | test concept acc | "
        "test correction gain | test Δ vs standard, paired |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in result["means"].items():
        paired = paired_test_difference(result["runs"], name) if name != "standard" else None
        lines.append(
            f"| {name} | {', '.join(map(str, r['seeds']))} | {cell(r['dev_task_accuracy'])} | "
            f"{cell(r['dev_concept_accuracy'])} | {cell(r['dev_correction_gain'], True)} | "
            f"{cell(r['test_task_accuracy'])} | {cell(r['test_concept_accuracy'])} | "
            f"{cell(r['test_correction_gain'], True)} | "
            + (f"{cell(paired[0], True)} ± {100 * paired[1]:.1f} |" if paired else "– |")
        )
    lines += [
        "",
        f"Chosen on dev (the highest dev correction gain among the concept-embedding variants within "
        f"{100 * ACCURACY_SLACK:.1f} points of the standard model's dev accuracy, concept accuracy ≥ "
        f"{CONCEPT_FLOOR:.0%}): **{result['chosen'] or 'none'}**.",
    ]
    competing = [r for n, r in result["means"].items() if sweep.variants[n][0] == sweep.concept_config]
    lines += [
        "",
        "Test Δ vs standard: the variant's test task accuracy minus the standard model's on the same seeds, "
        "mean ± standard error, in points (read after the choice, never for it).",
    ]
    if len(competing) >= 3:

        def r(x, y):
            return np.corrcoef([c[x] for c in competing], [c[y] for c in competing])[0, 1]

        lines += [
            "",
            f"Across these {len(competing)} variants' means, the correlation of dev task accuracy with dev "
            f"correction gain is {r('dev_task_accuracy', 'dev_correction_gain'):+.2f}; of dev with test task accuracy "
            f"{r('dev_task_accuracy', 'test_task_accuracy'):+.2f}, of dev with test correction gain "
            f"{r('dev_correction_gain', 'test_correction_gain'):+.2f} (how far dev ranks the variants as test does).",
        ]
    errors = [r for r in result["runs"] if "error" in r]
    if errors:
        lines += ["", "Runs that failed: " + ", ".join(f"{r['variant']} (seed {r['seed']})" for r in errors) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", choices=list(SWEEPS), default="cebab")
    parser.add_argument("--variants", nargs="+", default=None, help="names in the sweep's table (default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process")
    parser.add_argument("--time-limit", type=float, default=None, help="start no run after this many seconds")
    parser.add_argument("--data-root", default=os.environ.get("LUCIDLM_DATA", str(ROOT.parent / "shared" / "data")))
    parser.add_argument(
        "--note", default=None, help="what a reader should know of this machine's set-up (kept in the results)"
    )
    args = parser.parse_args()
    sweep = SWEEPS[args.sweep]
    unknown = [v for v in args.variants or [] if v not in sweep.variants]
    if unknown:
        parser.error(f"--variants: {unknown} not in the {args.sweep} sweep; its variants: {list(sweep.variants)}")
    variants = args.variants or list(sweep.variants)
    command = "python bench/cem_selection.py" + (f" --sweep {args.sweep}" if args.sweep != "cebab" else "")
    command += " --seeds " + " ".join(map(str, args.seeds))
    if variants != list(sweep.variants):
        command += " --variants " + " ".join(f'"{v}"' for v in variants)
    if args.time_limit is not None:
        command += f" --time-limit {args.time_limit:g}"
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    # Seed by seed: under a time limit every variant gets its first seeds before any gets more.
    queue = [(name, seed) for seed in args.seeds for name in variants]
    runs, start = [], time.perf_counter()
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
        running = set()
        while queue or running:
            while (
                queue
                and len(running) < args.jobs
                and (args.time_limit is None or time.perf_counter() - start < args.time_limit)
            ):
                name, seed = queue.pop(0)
                running.add(pool.submit(train_one, args.sweep, name, seed, args.data_root, threads))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                row = future.result()
                runs.append(row)
                print(
                    json.dumps(row if "error" not in row else {k: row[k] for k in ("variant", "seed", "error")}),
                    flush=True,
                )
            write_results(sweep, runs, command, args.note)
    if queue:
        print(f"time limit: not started: {queue}", flush=True)
    print((RESULTS / f"{sweep.results}.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
