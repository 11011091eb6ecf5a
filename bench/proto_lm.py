"""proto-lm beside the standard fine-tuned model, same backbone and budget; an ablation of the
cohesion/separation terms and of the prototype count; hard projection; the head's cost.

    python bench/proto_lm.py [--sst2-train 3000] [--epochs 2] [--ablation-train 1000] ...
    python bench/proto_lm.py --skip sst2 timing --merge ...   # the other sections, added to the last run's

Prints the figures and writes bench/results/proto_lm.{json,md}. The main comparison trains from
the ready configs configs/{sst2,cebab}-proto.yaml, as `lucidlm train` does; the standard model
(`StandardLM`) gets the same data, backbone and training section. Every
model is chosen on dev and reported on test (SST-2: GLUE dev; CEBaB: test).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
import transformers
from common import relative_paths  # noqa: E402 (bench/ is on the path)

from lucidlm import PrototypeLM
from lucidlm.experiment import Experiment, load_experiment_task, read_experiment, run_experiment

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
STANDARD = {"family": "standard", "pooling": "mean"}


def with_budget(
    experiment: Experiment, args, name: str, train_rows: int | None, epochs: int | None = None
) -> Experiment:
    """The config's experiment with this benchmark's budget: rows, epochs, dev size, no progress bars."""
    subsample = dict(experiment.data.get("subsample") or {})
    if train_rows:
        subsample["train"] = train_rows
    if args.dev_rows:
        subsample["dev"] = args.dev_rows
    training = replace(experiment.training, epochs=epochs or args.epochs, progress=False)
    return replace(
        experiment,
        data={**experiment.data, "subsample": subsample},
        training=training,
        output_dir=ROOT / "runs" / f"bench-{name}",
    )


def train(experiment: Experiment, model: dict | None = None) -> dict:
    if model is not None:
        experiment = replace(
            experiment,
            model={"backbone": experiment.model["backbone"], **model},
            output_dir=experiment.output_dir.with_name(experiment.output_dir.name + "-standard"),
        )
    start = time.perf_counter()
    trained, metrics = run_experiment(experiment)
    return {
        "model": trained,
        "test": metrics["test"]["task"],
        "dev": metrics["dev"]["task"],
        "seconds": time.perf_counter() - start,
        "epochs_run": sum(1 for r in trained.training_history if "epoch" in r),
        "config": experiment.to_dict(),
    }


def reused_standard(experiment: Experiment) -> dict | None:
    """The standard model of bench/cebab_bottleneck.py, if its data and training match exactly."""
    path = RESULTS / "cebab_bottleneck.json"
    row = json.loads(path.read_text())["modes"].get("standard") if path.is_file() else None
    if row is None:
        return None
    trained = row["config"]
    same = (
        trained["training"] == {**asdict(experiment.training), "progress": trained["training"]["progress"]}
        and _data(trained["data"]) == _data(experiment.data)
        and trained["model"]["backbone"] == experiment.model["backbone"]
    )
    if not same:
        return None
    return {
        "test": row["test"]["task"],
        "dev": row["dev"]["task"],
        "seconds": row["train_seconds"],
        "epochs_run": row["epochs_run"],
        "config": trained,
        "reused_from": "bench/results/cebab_bottleneck.json",
    }


def _data(data: dict) -> dict:
    return {k: v for k, v in data.items() if v or k != "subsample"}


def hard_projection(model: PrototypeLM, experiment: Experiment) -> dict:
    """Test metrics before and after moving every prototype onto its nearest training example."""
    task = load_experiment_task(experiment.data)
    before = model.evaluate(task.test)["task"]
    model.project(task.train, hard=True)
    return {"before": before, "after": model.evaluate(task.test)["task"]}


def ablation(experiment: Experiment, variants: dict[str, dict]) -> dict:
    """The same task, data and training for each change of the model config."""
    task = load_experiment_task(experiment.data)
    options = {k: v for k, v in experiment.model.items() if k != "family"}
    rows = {}
    for name, change in variants.items():
        start = time.perf_counter()
        model = PrototypeLM.from_backbone(task=task.spec, seed=experiment.training.seed, **{**options, **change})
        model.fit(task.train, eval_data=task.dev, config=experiment.training)
        rows[name] = {
            "change": change,
            "test": model.evaluate(task.test)["task"],
            "seconds": time.perf_counter() - start,
        }
        print(f"ablation {name}: {json.dumps(rows[name]['test'])} ({rows[name]['seconds']:.0f} s)", flush=True)
    return rows


@torch.no_grad()
def head_timing(spec, batch: int, tokens: int, prototypes: int, repeats: int) -> dict:
    """Seconds of the backbone's forward and of the prototype head (attention pooling, distances,
    similarities, label head) on the same random batch, in the same run; medians of ``repeats``."""
    model = PrototypeLM.from_backbone(task=spec, prototypes_per_class=prototypes // spec.num_labels).eval()
    assert model.num_prototypes == prototypes
    input_ids = torch.randint(1000, model.tokenizer.vocab_size, (batch, tokens))
    mask = torch.ones(batch, tokens, dtype=torch.long)
    backbone_s, head_s = [], []
    for _ in range(repeats + 1):  # the first round warms up and is dropped
        start = time.perf_counter()
        hidden = model.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state
        middle = time.perf_counter()
        model.head(hidden, mask)
        end = time.perf_counter()
        backbone_s.append(middle - start)
        head_s.append(end - middle)
    backbone, head = statistics.median(backbone_s[1:]), statistics.median(head_s[1:])
    return {
        "batch": batch,
        "tokens": tokens,
        "prototypes": prototypes,
        "repeats": repeats,
        "backbone_seconds": backbone,
        "head_seconds": head,
        "head_share": head / backbone,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sst2-train", type=int, default=3000, help="SST-2 training rows (a fixed seeded subset)")
    parser.add_argument("--cebab-train", type=int, default=0, help="CEBaB training rows; 0: all of train_exclusive")
    parser.add_argument("--epochs", type=int, default=2, help="epochs for every model")
    parser.add_argument("--cebab-epochs", type=int, default=0, help="epochs on CEBaB; 0: --epochs")
    parser.add_argument("--dev-rows", type=int, default=0, help="dev rows for model selection; 0: all")
    parser.add_argument("--ablation-train", type=int, default=1000, help="SST-2 training rows of the ablation")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 leaves a core to other work)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["sst2", "cebab", "ablation", "timing"])
    parser.add_argument("--merge", action="store_true", help="add to the sections of the last run's results")
    parser.add_argument(
        "--reuse-standard",
        action="store_true",
        help="CEBaB: take the standard model from bench/results/cebab_bottleneck.json when it was "
        "trained with exactly this budget (same data, training config and seed)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    started = time.perf_counter()

    sst2 = read_experiment(ROOT / "configs" / "sst2-proto.yaml")
    cebab = read_experiment(ROOT / "configs" / "cebab-proto.yaml")
    command = (
        "python bench/proto_lm.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("skip", "merge") and v)
        + (" --skip " + " ".join(args.skip) if args.skip else "")
        + (" --merge" if args.merge else "")
    )
    result = {"commands": [], "comparison": {}, "hard_projection": {}, "wall_seconds_before": 0.0}
    if args.merge and (RESULTS / "proto_lm.json").is_file():
        result = json.loads((RESULTS / "proto_lm.json").read_text())
        result["wall_seconds_before"] = result.pop("wall_seconds")
        result.setdefault("commands", [result.pop("command")] if "command" in result else [])
    result["commands"].append(command)
    result["machine"] = {
        "platform": platform.platform(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if "timing" not in args.skip:
        spec = load_experiment_task(sst2.data).spec
        result["timing"] = head_timing(spec, batch=64, tokens=50, prototypes=1000, repeats=10)
        print(f"timing: {json.dumps(result['timing'])}", flush=True)
    budgets = (
        ("sst2", sst2, args.sst2_train, args.epochs),
        ("cebab", cebab, args.cebab_train, args.cebab_epochs or args.epochs),
    )
    for name, experiment, rows, epochs in budgets:
        if name in args.skip:
            continue
        experiment = with_budget(experiment, args, f"{name}-proto", rows, epochs)
        task = load_experiment_task(experiment.data)
        floor = float(np.bincount(task.test.labels).max() / len(task.test))
        proto = train(experiment)
        standard = reused_standard(experiment) if name == "cebab" and args.reuse_standard else None
        standard = standard or train(experiment, STANDARD)
        result["comparison"][name] = {
            "train_rows": len(task.train),
            "dev_rows": len(task.dev),
            "test_rows": len(task.test),
            "majority_floor": floor,
            "epochs": epochs,
            "prototype": {k: v for k, v in proto.items() if k != "model"},
            "standard": {k: v for k, v in standard.items() if k != "model"},
        }
        result["hard_projection"][name] = hard_projection(proto["model"], experiment)
        print(
            f"{name}: proto {json.dumps(proto['test'])} standard {json.dumps(standard['test'])} "
            f"hard projection {json.dumps(result['hard_projection'][name])}",
            flush=True,
        )
        save(result, started)

    if "ablation" not in args.skip:
        experiment = with_budget(sst2, args, "sst2-ablation", args.ablation_train)
        result["ablation"] = {
            "task": "sst2",
            "train_rows": args.ablation_train,
            "epochs": args.epochs,
            "variants": ablation(
                experiment,
                {
                    "defaults (10 per class)": {},
                    "λ1 = λ2 = 0": {"cohesion_weight": 0.0, "separation_weight": 0.0},
                    "50 per class": {"prototypes_per_class": 50},
                },
            ),
        }

    print(save(result, started))


def save(result: dict, started: float) -> str:
    """Write what is measured so far (a cut-short run still leaves its figures); return the table."""
    result["wall_seconds"] = result["wall_seconds_before"] + time.perf_counter() - started
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "proto_lm.json").write_text(json.dumps(relative_paths(result), indent=2))
    table = markdown(result)
    (RESULTS / "proto_lm.md").write_text(table)
    return table


def markdown(result: dict) -> str:
    lines = [
        "# proto-lm vs standard fine-tuning, all-MiniLM-L6-v2",
        "",
        "Commands: " + "; ".join(f"`{c}`" for c in result["commands"]) + f" ({result['wall_seconds'] / 60:.0f} min "
        f"in all, {result['machine']['threads']} CPU thread(s), the machine shared with other jobs). Each model "
        "is chosen on dev (a fixed subset of dev rows when stated) and reported on the full test split.",
        "",
    ]
    if result["comparison"]:
        lines += [
            "| task | train rows | dev rows | epochs | test majority | model | test acc | test macro-F1 | train+eval s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, c in result["comparison"].items():
            for kind in ("prototype", "standard"):
                r = c[kind]
                lines.append(
                    f"| {name} | {c['train_rows']} | {c['dev_rows']} | {c['epochs']} | {c['majority_floor']:.1%} | "
                    f"{'PrototypeLM' if kind == 'prototype' else 'standard (StandardLM)'} | "
                    f"{r['test']['accuracy']:.1%} | {r['test']['macro_f1']:.3f} | {r['seconds']:.0f} |"
                )
        lines += [
            "",
            "Hard projection (each prototype moved onto its nearest own-class training example):",
            "",
            "| task | test acc before | after | macro-F1 before | after |",
            "|---|---|---|---|---|",
        ]
        for name, h in result["hard_projection"].items():
            lines.append(
                f"| {name} | {h['before']['accuracy']:.1%} | {h['after']['accuracy']:.1%} | "
                f"{h['before']['macro_f1']:.3f} | {h['after']['macro_f1']:.3f} |"
            )
    if "ablation" in result:
        a = result["ablation"]
        lines += [
            "",
            f"Ablation on SST-2 ({a['train_rows']} training rows, {a['epochs']} epochs):",
            "",
            "| variant | test acc | test macro-F1 | s |",
            "|---|---|---|---|",
        ]
        for name, r in a["variants"].items():
            lines.append(f"| {name} | {r['test']['accuracy']:.1%} | {r['test']['macro_f1']:.3f} | {r['seconds']:.0f} |")
    if "timing" in result:
        t = result["timing"]
        lines += [
            "",
            (
                f"Head cost at P = {t['prototypes']}, batch {t['batch']} × {t['tokens']} tokens (median of "
                f"{t['repeats']}): backbone {t['backbone_seconds'] * 1000:.0f} ms, prototype head "
                f"{t['head_seconds'] * 1000:.1f} ms, **{t['head_share']:.1%}** of the backbone's forward "
                "(target ≤ 5%)."
            ),
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
