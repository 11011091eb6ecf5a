"""CEBaB, default backbone: the standard baseline and the concept bottleneck modes (scalar and
embedding concept layers), trained on train_exclusive, chosen on dev, reported on test;
bottleneck modes also with every concept set to gold.

    python bench/cebab_bottleneck.py [--modes standard joint ...] [--seeds 0 1 2]

Prints a table and writes bench/results/cebab_bottleneck.{json,md}. Each mode trains from its
ready config configs/cebab-<mode>.yaml, exactly as `lucidlm train` does.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from common import (  # bench/ is on the path
    RESULTS,
    ROOT,
    paired_with_standard,
    random_intervention_rate,
    relative_paths,
    set_options,
    signed_points,
    standard_rows,
)

from lucidlm.experiment import load_experiment_task, read_experiment, run_experiment

# Options a row may train with instead of its config's: flag: (model.<option> or training.<option>,
# the row name's label, the run folder's label, what it is). Rows and folders name them in this order.
OVERRIDES = {
    "random-intervention-rate": ("model.random_intervention_rate", "RandInt", "randint", "RandInt rate"),
    "intervention-loss-weight": ("model.intervention_loss_weight", "IntCEM weight", "weight", "IntCEM loss weight"),
    "intervention-objective": (
        "model.intervention_objective",
        "objective",
        "objective",
        "intervention-aware objective: sampled_horizon (docs/methods.md §6.2's simplified term) or "
        "published (IntCEM as published, §7.1)",
    ),
    "rollout-losses": (
        "model.rollout_losses",
        "rollout losses",
        "rolloutlosses",
        "published objective's task losses: every_step (the paper's) or last_step (the released code's default)",
    ),
    "concept-loss-weight": ("model.concept_loss_weight", "concept weight", "conceptweight", "concept loss weight λ"),
    "counterfactual-loss-weight": (
        "model.counterfactual_loss_weight",
        "CF weight",
        "cfweight",
        "counterfactual-consistency loss weight",
    ),
    "counterfactual-label-weight": (
        "model.counterfactual_label_weight",
        "CF label weight",
        "cflabel",
        "weight of the corrected original's cross-entropy to the edit's own gold label",
    ),
    "value-embedding": (
        "model.value_embedding",
        "values",
        "values",
        "value a corrected concept embedding reads: input (CEM's), mean or learned",
    ),
    "side-channel-penalty": (
        "model.side_channel_penalty",
        "side penalty",
        "sidepenalty",
        "weight of the penalty on what the label reads of the text beside the concept values",
    ),
    "dropout": ("model.dropout", "dropout", "dropout", "dropout on the pooled vector"),
    "intervention-holdout": (
        "model.intervention_holdout",
        "holdout",
        "holdout",
        "share of training rows held out of joint training to tune the label head on",
    ),
    "mixup-alpha": ("model.mixup_alpha", "mixup", "mixup", "concept-level mixup's Beta parameter α (C3M)"),
    "head-learning-rate": (
        "training.head_learning_rate",
        "head lr",
        "headlr",
        "learning rate of everything but the backbone (concept layer, label head)",
    ),
    "learning-rate": ("training.learning_rate", "lr", "lr", "peak learning rate of the backbone"),
    "batch-size": ("training.batch_size", "batch", "batch", "batch size"),
    "epochs": ("training.epochs", "epochs", "epochs", "number of epochs (the learning rate decays over them)"),
    "mixed-precision": (
        "training.mixed_precision",
        "mixed precision",
        "amp",
        "autocast of the training steps (no, bf16, fp16)",
    ),
    "pooling": ("model.pooling", "pooling", "pooling", "pooling of the backbone's token states (mean, cls, ...)"),
}
FLAG_TYPES = {
    "batch-size": int,
    "epochs": int,
    "pooling": str,
    "mixed-precision": str,
    "intervention-objective": str,
    "rollout-losses": str,
    "value-embedding": str,
}  # the others are floats


def shown(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


MODES = (
    "standard",
    "standard-augmented",
    "joint",
    "sequential",
    "independent",
    "joint-augmented",
    "cem",
    "intcem",
    "intcem-augmented",
    "joint-counterfactual",
    "intcem-counterfactual",
    "proto",
    "intcem-lora",
    "intcem-frozen",
    "intcem-bf16",
)


def majority_floors_of(rows: dict) -> dict:
    """The floors of CEBaB's four-aspect test set (the rows of configs/cebab-<mode>.yaml)."""
    return next(
        (r["majority_floors_test"] for m, r in rows.items() if "augmented" not in m and "majority_floors_test" in r), {}
    )


def majority_floors(task) -> dict:
    labels = task.test.labels
    concepts = task.test.concepts
    return {
        "task_accuracy": float(np.bincount(labels).max() / len(labels)),
        "concept_accuracy": float(
            np.mean([np.bincount(concepts[:, k]).max() / len(concepts) for k in range(concepts.shape[1])])
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--modes",
        nargs="+",
        default=list(MODES),
        choices=MODES,
        help="standard-augmented: the standard model on the 13-concept runs' data set (its own test rows); "
        "joint-augmented: the joint model on C3M's 13 concepts (configs/cebab-joint-augmented.yaml); "
        "cem: concept embeddings (configs/cebab-cem.yaml); intcem: with intervention-aware training; "
        "intcem-augmented: IntCEM on C3M's 13 concepts; joint-counterfactual: joint with "
        "counterfactual-consistency training on CEBaB's human edits; intcem-counterfactual: IntCEM with it; "
        "proto: proto-lm (configs/cebab-proto.yaml); intcem-lora: IntCEM with a LoRA adapter, r = 16 on "
        "every linear layer; intcem-frozen: heads only; intcem-bf16: bf16 weights and mixed precision",
    )
    for flag, (option, label, _, meaning) in OVERRIDES.items():
        parser.add_argument(
            f"--{flag}",
            type=FLAG_TYPES.get(flag, float),
            default=None,
            help=f"train with this {meaning} ({option}) instead of the config's; rows named '<mode>, {label} <value>'",
        )
    parser.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0],
        help="train each mode once per seed (the configs' is 0); rows of other seeds are named "
        "'<mode>, seed <s>' and the table adds mean ± standard deviation over seeds",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    rows = {}
    overrides = {flag: getattr(args, flag.replace("-", "_")) for flag in OVERRIDES}
    overrides = {flag: value for flag, value in overrides.items() if value is not None}
    for mode in args.modes:
        for seed in args.seeds:
            name = mode + "".join(f", {OVERRIDES[flag][1]} {shown(value)}" for flag, value in overrides.items())
            folder = mode + "".join(f"-{OVERRIDES[flag][2]}{shown(value)}" for flag, value in overrides.items())
            if seed != 0:
                name, folder = name + f", seed {seed}", folder + f"-seed{seed}"
            experiment = read_experiment(
                ROOT / "configs" / f"cebab-{mode}.yaml", output_dir=ROOT / "runs" / f"bench-cebab-{folder}"
            )
            set_options(experiment, {OVERRIDES[flag][0]: value for flag, value in overrides.items()})
            experiment.training.seed = seed
            experiment.training.progress = False
            floors = majority_floors(load_experiment_task(experiment.data))
            start = time.perf_counter()
            model, metrics = run_experiment(experiment)
            command = (
                "python bench/cebab_bottleneck.py --modes "
                + mode
                + "".join(f" --{flag} {shown(value)}" for flag, value in overrides.items())
                + (f" --seeds {seed}" if seed != 0 else "")
            )
            rows[name] = {
                "command": command,
                "test": metrics["test"],
                "dev": metrics["dev"],
                "train_seconds": time.perf_counter() - start,
                "epochs_run": sum(1 for r in model.training_history if "epoch" in r),
                "config": experiment.to_dict(),
                "majority_floors_test": floors,
                **footprint(model, experiment.output_dir),
            }
            print(f"{name}: {json.dumps(metrics['test']['task'])}", flush=True)
            write_results(rows)  # after each run, so a finished run is never lost


def footprint(model, run_dir: Path) -> dict:
    """What trains and what the saved run weighs: the share of parameters that train (an adapter's
    and the heads', or all of them) and the bytes of the run's model.safetensors."""
    total = sum(p.numel() for p in model.parameters())
    trained = sum(v.numel() for k, v in model.trained_state_dict().items() if k in dict(model.named_parameters()))
    if not model.config.trains_part_of_backbone:
        trained = total
    return {
        "trained_parameters": trained,
        "parameters": total,
        "saved_bytes": (Path(run_dir) / "model.safetensors").stat().st_size,
    }


def write_results(rows: dict) -> None:
    """Merge into the results file: modes run now replace their earlier rows, others stay."""
    previous = RESULTS / "cebab_bottleneck.json"
    floors = {}
    if previous.is_file():
        earlier = json.loads(previous.read_text())
        rows, floors = {**earlier["modes"], **rows}, earlier.get("majority_floors_test", {})
    rows = dict(sorted(rows.items(), key=lambda item: (MODES.index(item[0].split(",")[0]), item[0])))
    result = {
        "command": "python bench/cebab_bottleneck.py",
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "majority_floors_test": majority_floors_of(rows) or floors,
        "modes": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cebab_bottleneck.json").write_text(json.dumps(relative_paths(result), indent=2))
    table = markdown(result)
    (RESULTS / "cebab_bottleneck.md").write_text(table)
    print(table, flush=True)


def markdown(result: dict) -> str:
    floors = result["majority_floors_test"]
    lines = [
        "# CEBaB test, all-MiniLM-L6-v2, trained on train_exclusive, chosen on dev",
        "",
        f"Command: `{result['command']}`. Majority-class floors on test: task accuracy "
        f"{floors['task_accuracy']:.1%}, concept accuracy {floors['concept_accuracy']:.1%}.",
        "Gold concepts: the concepts predicted wrong are set to their gold value, the others left as "
        "predicted; all concepts forced: every concept's logits replaced by its gold value's forced logits "
        "(what the label gets from the concept values alone).",
        "",
        "RandInt: `random_intervention_rate`, the probability with which each concept is replaced by its "
        "gold value while the label head trains (0: the label head reads predicted concepts only; "
        "independent reads gold concepts by definition).",
        "",
        'intcem rows (and "IntCEM weight"): intervention-aware training with `intervention_objective: sampled_horizon`, '
        "docs/methods.md §6.2's simplification of IntCEM (one T ~ U{1..K} a batch, the fixed policy's order, "
        "T/K × CE(y | corrected)), unless the row says `objective published`: IntCEM as published (§7.1; its weight "
        "is then that of the learned policy's imitation loss).",
        "",
        "| mode | RandInt | task acc | task macro-F1 | concept acc | concept macro-F1 | task acc, gold concepts | task macro-F1, gold concepts | task acc, all concepts forced | epochs | train+eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, row in result["modes"].items():
        t = row["test"]
        c, g, forced = t.get("concepts"), t.get("task_gold_concepts"), t.get("task_forced_concepts")
        cells = [
            random_intervention_rate(row),
            f"{t['task']['accuracy']:.1%}",
            f"{t['task']['macro_f1']:.3f}",
            f"{c['accuracy']:.1%}" if c else "–",
            f"{c['macro_f1']:.3f}" if c else "–",
            f"{g['accuracy']:.1%}" if g else "–",
            f"{g['macro_f1']:.3f}" if g else "–",
            f"{forced['accuracy']:.1%}" if forced else "–",
            str(row["epochs_run"]),
            f"{row['train_seconds']:.0f}",
        ]
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    augmented = [m for m in result["modes"] if "augmented" in m]
    if augmented:
        row = result["modes"][augmented[0]]
        f = row["majority_floors_test"]
        lines += [
            "",
            f"The {len(augmented)} rows of modes *-augmented: on C3M's data set with its 13 concepts (`cebab-augmented`: CEBaB's "
            f"training reviews; its own test set, which differs from CEBaB's by a few rows: {row['test']['n']} rows, "
            "so these rows compare with standard-augmented; majority floors task "
            f"{f['task_accuracy']:.1%}, concept {f['concept_accuracy']:.1%}).",
        ]
    commands = [f"- {m}: `{r['command']}`" for m, r in result["modes"].items() if "command" in r]
    if commands:
        lines += ["", "Rows run on their own (the others: the command above):", "", *commands]
    lines += over_seeds(result["modes"])
    sized = [(m, r) for m, r in result["modes"].items() if "saved_bytes" in r]
    if sized:
        lines += [
            "",
            "What trains and what a saved run weighs (model.safetensors):",
            "",
            "| mode | parameters that train | share | saved run |",
            "|---|---|---|---|",
        ]
        for mode, r in sized:
            lines.append(
                f"| {mode} | {r['trained_parameters']:,} of {r['parameters']:,} | "
                f"{r['trained_parameters'] / r['parameters']:.1%} | {r['saved_bytes'] / 2**20:.1f} MiB |"
            )
    per_concept = [
        (m, r["test"]["concepts"]["per_concept"]) for m, r in result["modes"].items() if "concepts" in r["test"]
    ]
    if per_concept:
        names = list(per_concept[0][1])
        lines += [
            "",
            "Per concept, test accuracy / macro-F1:",
            "",
            "| mode | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for mode, pc in per_concept:
            lines.append(
                f"| {mode} | " + " | ".join(f"{pc[n]['accuracy']:.1%} / {pc[n]['macro_f1']:.3f}" for n in names) + " |"
            )
    return "\n".join(lines) + "\n"


def seed_groups(rows: dict) -> dict[str, list[dict]]:
    """Rows by their name less ', seed <s>' (the configs' seed 0 has none), those with several seeds."""
    groups: dict[str, list[dict]] = {}
    for name, row in rows.items():
        groups.setdefault(re.sub(r", seed \d+$", "", name), []).append(row)
    return {name: group for name, group in groups.items() if len(group) > 1}


def over_seeds(rows: dict) -> list[str]:
    """Mean ± standard deviation (over seeds, ddof 1) of the headline figures on test, and of dev task
    accuracy and correction gain, which choose a config (bench/cem_selection.py's rule reads seed
    means; its concept floor is met by every row here)."""
    groups = seed_groups(rows)
    if not groups:
        return []
    task = lambda t: t["task"]["accuracy"]  # noqa: E731
    gain = lambda t: t["task_gold_concepts"]["accuracy"] - t["task"]["accuracy"] if "task_gold_concepts" in t else None  # noqa: E731
    figures = {
        "task acc": ("test", task),
        "concept acc": ("test", lambda t: t["concepts"]["accuracy"] if "concepts" in t else None),
        "correction gain (wrong concepts → gold)": ("test", gain),
        "dev: task acc": ("dev", task),
        "dev: correction gain": ("dev", gain),
    }
    standard = standard_rows(rows)
    lines = [
        "",
        "Over seeds (mean ± standard deviation, points; paired: the mode's task accuracy minus "
        "standard fine-tuning's on the same data set, split and seeds, mean ± standard error):",
        "",
        "| mode | seeds | " + " | ".join(figures) + " | test task acc − standard's, paired | dev: paired |",
        "|---|---|" + "---|" * (len(figures) + 2),
    ]
    for name, group in groups.items():
        cells = []
        for split, read in figures.values():
            values = [read(row[split]) for row in group]
            cells.append("–" if None in values else f"{100 * np.mean(values):.1f} ± {100 * np.std(values, ddof=1):.1f}")
        for split in ("test", "dev"):
            paired = paired_with_standard(standard, group, split)
            cells.append("–" if paired is None else f"{signed_points(paired[0])} ± {100 * paired[1]:.1f}")
        seeds = ", ".join(str(row["config"]["training"]["seed"]) for row in group)
        lines.append(f"| {name} | {seeds} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
