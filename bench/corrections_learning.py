"""Learning from corrections on CEBaB, with a simulated reviewer who answers from the gold values.

    python bench/corrections_learning.py [--budgets 100 200 400] [--seeds 0 1 2]

The parent: configs/cebab-intcem.yaml trained on 25% of train_exclusive (a fixed sample). The
remaining 75% are the review pool. Three reviewers spend the same clicks (one answer = one click):

- concepts, queue order: works through the pool in the queue's order (``lucidlm serve --pool``,
  policy expected_change) and answers the concept the queue asks first with its gold value; a text
  whose asked concept has no gold value (no majority among CEBaB's annotators) is skipped, free;
- labels, queue order: gives the gold label of the texts in the same order;
- labels, random order: gives the gold label of texts drawn at random from the pool.

After each budget of clicks the reviewer's records (kept in a corrections store, exactly as the page
keeps them) are learned from with ``learn`` (``lucidlm learn``'s function): a new run fine-tuned from
the parent on its training data plus the records, with learn's defaults (the parent's settings, its
heads at the backbone's learning rate). A control continues the parent's training on its
own data with no corrections, so that what the corrections add is told apart from more epochs.

Reported per run: dev and test task accuracy against the parent's; for the concept reviewer, the
share of corrected values the new run reads on the corrected texts (and the parent's share); for a
label reviewer, the share of given labels the new run predicts. Test holds none of the pool's texts,
so test accuracy is "the rest of test". ``--seeds``: learn each run once per seed (the parent and the
reviewers' answers stay those of seed 0; rows of other seeds are named "…, seed s" and merge into
the results), and the table adds the mean over seeds. Writes bench/results/corrections_learning.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import platform
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from lucidlm.corrections import CorrectionStore
from lucidlm.corrections.learn import continuation, learn, run_fingerprint
from lucidlm.corrections.queue import ReviewQueue
from lucidlm.corrections.recording import make_record
from lucidlm.data import MISSING
from lucidlm.experiment import load_experiment_task, read_experiment, run_experiment
from lucidlm.layout import CHECKPOINT_DIR, write_record
from lucidlm.models import load_pretrained

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
RUNS = ROOT / "runs" / "bench-corrections"
PARENT_SHARE = 0.25
POLICY = "expected_change"
ARMS = ("concepts, queue order", "labels, queue order", "labels, random order")
# learn's continuation settings, chosen on dev with the concept reviewer's first budget: the parent's
# own (heads at their rate for fresh heads), both rates / 10, and learn's default (heads at the backbone's)
CONTINUATIONS = {
    "the parent's settings": lambda t: {"head_learning_rate": t.head_learning_rate},
    "both learning rates / 10": lambda t: {
        "learning_rate": t.learning_rate / 10,
        "head_learning_rate": t.head_learning_rate / 10,
    },
}


def parent_run(share: float):
    """The parent, trained once (a finished run of the same config is reused) and its task."""
    experiment = read_experiment(ROOT / "configs" / "cebab-intcem.yaml", output_dir=RUNS / "parent")
    full = load_experiment_task(experiment.data)
    experiment.data["subsample"] = {"train": int(round(share * len(full.train)))}
    experiment.training.progress = False
    run_file = experiment.output_dir / "run.json"
    if not (run_file.is_file() and json.loads(run_file.read_text())["experiment"]["data"] == experiment.data):
        shutil.rmtree(experiment.output_dir, ignore_errors=True)
        run_experiment(experiment)
    own = load_experiment_task(experiment.data).train
    taken = set(own.texts)
    pool = [i for i, text in enumerate(full.train.texts) if text not in taken]
    return experiment, full, full.train.select(pool), len(own)


def review(arm: str, model, pool, spec, store: CorrectionStore, run: str, fingerprint: str, budget: int, queue):
    """The reviewer's clicks as records in ``store`` (the first ``budget`` answers)."""
    index = {text: i for i, text in enumerate(pool.texts)}
    user = arm.split(",")[0]
    if arm == "labels, random order":
        order = np.random.default_rng(0).permutation(len(pool))
        items = ((int(i), None) for i in order)
    else:
        items = iter(lambda: queue.next(user), None)
    clicks = 0
    for item in items:
        if clicks == budget:
            break
        if isinstance(item, tuple):
            i, ask = item
        else:
            i, ask = index[item.text], item.ask
        values, label = {}, None
        if arm.startswith("concepts"):
            k = spec.concept_names.index(ask)
            if pool.concepts[i, k] == MISSING:
                queue.skip(user)
                continue
            values = {ask: spec.concepts[k].values[pool.concepts[i, k]]}
        else:
            label = spec.classes[pool.labels[i]]
        record, _ = make_record(model, pool.texts[i], values, label, user, run, fingerprint, key=f"{arm}:{i}")
        store.append(record)
        clicks += 1
    return store.standing()


def read_back(model, records) -> float:
    """The share of the records' corrected values (or given labels) that ``model`` reads on their texts."""
    predictions = model.predict([r.text for r in records])
    hits = total = 0
    for record, prediction in zip(records, predictions):
        read = prediction.to_dict()
        for name, value in record.set_values.items():
            hits, total = hits + (read["concepts"][name]["value"] == value), total + 1
        if record.gold_label is not None:
            hits, total = hits + (str(read["label"]) == record.gold_label), total + 1
    return hits / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", nargs="+", type=int, default=[100, 200, 400])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="learn's training seeds")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="the reviewers to run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    experiment, full, pool, parent_rows = parent_run(PARENT_SHARE)
    parent_dir = experiment.output_dir
    parent = json.loads((parent_dir / "run.json").read_text())
    model = load_pretrained(parent_dir)
    fingerprint, run = run_fingerprint(parent_dir), parent_dir.name
    invocation = (
        "python bench/corrections_learning.py"
        + (f" --budgets {' '.join(map(str, args.budgets))}" if args.budgets != [100, 200, 400] else "")
        + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0] else "")
        + ("".join(f' --arms "{a}"' for a in args.arms) if args.arms != list(ARMS) else "")
    )
    result = {
        "command": "python bench/corrections_learning.py"
        + (f" --budgets {' '.join(map(str, args.budgets))}" if args.budgets != [100, 200, 400] else ""),
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "parent": {
            "config": "configs/cebab-intcem.yaml",
            "train_rows": parent_rows,
            "pool": len(pool),
            "dev": parent["metrics"]["dev"]["task"],
            "test": parent["metrics"]["test"]["task"],
        },
        "policy": POLICY,
        "runs": {},
    }
    previous = RESULTS / "corrections_learning.json"
    if previous.is_file():  # rows of other seeds or budgets, measured on the same parent, stay
        earlier = json.loads(previous.read_text())
        if earlier.get("parent") == result["parent"]:
            result["runs"] = earlier["runs"]

    def finish(name: str, out: Path, records, seconds: float, **extra) -> None:
        record = json.loads((out / "run.json").read_text())
        child = load_pretrained(out)
        row = {
            "dev": record["metrics"]["dev"]["task"],
            "test": record["metrics"]["test"]["task"],
            "seconds": seconds,
            **extra,
        }
        if records:
            row.update(
                records=len(records),
                read_right=read_back(child, records),
                parent_read_right=read_back(model, records),
                concept_labels=record["lineage"]["concept_labels"],
                labels=record["lineage"]["labels"],
            )
        row["command"] = invocation
        result["runs"][name] = row
        print(f"{name}: {json.dumps(row)}", flush=True)
        write(result)

    for arm in args.arms:
        folder = RUNS / arm.replace(", ", "-").replace(" ", "-")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        store = CorrectionStore(folder / "corrections.sqlite")
        queue = ReviewQueue.build(model, pool.texts, store, run, POLICY) if arm.endswith("queue order") else None
        records = review(arm, model, pool, full.spec, store, run, fingerprint, max(args.budgets), queue)
        for budget in args.budgets:
            taken = records[:budget]
            for seed in args.seeds:
                tag = "" if seed == 0 else f", seed {seed}"
                out = folder / (f"learned-{budget}" + ("" if seed == 0 else f"-seed{seed}"))
                start = time.perf_counter()
                learn(parent_dir, out, records=taken, seed=seed, progress=False)
                finish(
                    f"{arm}, {budget} clicks{tag}", out, taken, time.perf_counter() - start, clicks=budget, seed=seed
                )
            if arm == ARMS[0] and budget == args.budgets[0] and 0 in args.seeds:
                for variant, changes in CONTINUATIONS.items():
                    out = folder / f"learned-{budget}-{''.join(c if c.isalnum() else '-' for c in variant)}"
                    start = time.perf_counter()
                    learn(parent_dir, out, records=taken, progress=False, training=changes(experiment.training))
                    finish(
                        f"{arm}, {budget} clicks, {variant}",
                        out,
                        taken,
                        time.perf_counter() - start,
                        clicks=budget,
                        continuation=variant,
                    )

    task = load_experiment_task(experiment.data)
    for seed in args.seeds:
        control(parent_dir, experiment, task, seed, finish)


def control(parent_dir: Path, experiment, task, seed: int, finish) -> None:
    """The parent's training continued as learn continues it, on its own rows, no corrections."""
    start = time.perf_counter()
    control = RUNS / ("control" if seed == 0 else f"control-seed{seed}")
    shutil.rmtree(control, ignore_errors=True)
    model_copy = load_pretrained(parent_dir)
    training = dataclasses.replace(continuation(experiment.training), seed=seed)
    model_copy.fit(task.train, eval_data=task.dev, config=training, run_dir=control)
    model_copy.save_pretrained(control)
    shutil.rmtree(control / CHECKPOINT_DIR, ignore_errors=True)
    write_record(
        control,
        {
            "metrics": {s: model_copy.evaluate(getattr(task, s)) for s in ("dev", "test")},
            "lineage": {"concept_labels": 0, "labels": 0},
        },
    )
    tag = "" if seed == 0 else f", seed {seed}"
    finish(
        f"no corrections (the parent's training continued){tag}", control, [], time.perf_counter() - start, seed=seed
    )


def write(result: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "corrections_learning.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "corrections_learning.md").write_text(markdown(result))


def markdown(result: dict) -> str:
    p = result["parent"]
    lines = [
        "# Learning from corrections, CEBaB, simulated reviewer (bench/corrections_learning.py)",
        "",
        f"`{result['command']}`. Parent: {p['config']} trained on {p['train_rows']} rows (25% of train_exclusive, a "
        f"fixed sample); the pool: the other {p['pool']}. Queue policy: {result['policy']}. One click = one answer "
        "(a concept's gold value, or a text's gold label). Each new run: `learn` from the parent on its rows plus the "
        "records, with the parent's settings and its heads at the backbone's learning rate (seed 0); the control: the same "
        "continuation on the parent's rows alone. Read right: the share of the records' corrected values (or "
        "given labels) the run reads on their texts. Test holds none of the pool's texts.",
        "",
        "| run | clicks | concept labels | labels | dev acc | test acc | test − parent's | read right | parent read right |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| parent | – | – | – | {p['dev']['accuracy']:.1%} | {p['test']['accuracy']:.1%} | – | – | – |",
    ]
    for name, row in result["runs"].items():
        delta = 100 * (row["test"]["accuracy"] - p["test"]["accuracy"])
        lines.append(
            f"| {name} | {row.get('clicks', 0)} | {row.get('concept_labels', 0)} | {row.get('labels', 0)} | "
            f"{row['dev']['accuracy']:.1%} | {row['test']['accuracy']:.1%} | {delta:+.1f} | "
            + (f"{row['read_right']:.1%} | {row['parent_read_right']:.1%} |" if "read_right" in row else "– | – |")
        )
    commands = sorted({row.get("command", result["command"]) for row in result["runs"].values()})
    if len(commands) > 1:
        lines += [
            "",
            "Rows made by: " + "; ".join(f"`{c}`" for c in commands) + " (each row's command is in the JSON).",
        ]
    lines += over_seeds(result)
    lines += [
        "",
        f"Machine: {result['machine']['platform']}, torch {result['machine']['torch']}, "
        f"{result['machine']['threads']} threads.",
        "",
    ]
    return "\n".join(lines)


def over_seeds(result: dict) -> list[str]:
    """Mean ± standard deviation over learn's seeds of each run's test − parent's, where a run has
    several seeds; and in how many seeds the new run beat its parent."""
    parent = result["parent"]["test"]["accuracy"]
    groups: dict[str, list[dict]] = {}
    for name, row in result["runs"].items():
        groups.setdefault(re.sub(r", seed \d+$", "", name), []).append(row)
    groups = {name: rows for name, rows in groups.items() if len(rows) > 1}
    if not groups:
        return []
    lines = [
        "",
        "Over learn's seeds (mean ± standard deviation; the parent is the same):",
        "",
        "| run | seeds | test − parent's, points | seeds above the parent | read right |",
        "|---|---|---|---|---|",
    ]
    for name, rows in groups.items():
        deltas = np.array([100 * (r["test"]["accuracy"] - parent) for r in rows])
        read = [r["read_right"] for r in rows if "read_right" in r]
        lines.append(
            f"| {name} | {len(rows)} | {deltas.mean() + 0.0:+.1f} ± {deltas.std(ddof=1):.1f} | "
            f"{int((deltas > 0).sum())} of {len(rows)} | " + (f"{np.mean(read):.1%} |" if read else "– |")
        )
    return lines


if __name__ == "__main__":
    main()
