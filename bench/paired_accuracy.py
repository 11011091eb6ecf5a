"""Is a concept model's task accuracy below its black box's by more than the test set's noise?
Both saved runs predict the same test rows; the difference in accuracy gets a paired bootstrap
interval (rows resampled together) and McNemar's exact test on the rows where they disagree.

    python bench/paired_accuracy.py --pairs runs/bench-cebab-intcem-augmented:runs/bench-cebab-standard-augmented [--resamples 10000] [--seed 0]

Each pair is MODEL:BASELINE, two run folders trained on the same data set; the test rows of both
must be the same (texts, gold labels) in the same order. A side may be several runs separated by
commas (the same config over seeds): each row then counts as the share of those runs that label it
right, so the difference is the mean over seeds and its interval still resamples test rows (it
says how much the test set's sampling moves the seed mean; McNemar needs one run a side). Writes
bench/results/paired_accuracy.{json,md}, merged by pair (a pair given again replaces its row).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
from pathlib import Path

import numpy as np
import torch
import transformers
from common import relative_paths  # noqa: E402 (bench/ is on the path)
from scipy.stats import binomtest

from lucidlm.experiment import load_experiment_task, load_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def correct_on_test(run_dir: Path) -> tuple[np.ndarray, list[tuple]]:
    """Whether the run's model labels each of its data set's test rows right, and the rows
    (text, text pair, gold label)."""
    model, record = load_run(run_dir)
    if record is None:
        raise SystemExit(f"{run_dir}: no run.json; expected a run trained by `lucidlm train` or a bench")
    if model.spec.is_regression:
        raise SystemExit(f"{run_dir}: a regression task has no accuracy to compare")
    test = load_experiment_task(record["experiment"]["data"]).test
    logits = model.infer(test)["label_logits"]
    pairs = test.text_pairs or [None] * len(test)
    return logits.argmax(-1) == test.labels, list(zip(test.texts, pairs, test.labels.tolist()))


def right_on_test(run_dirs: list[Path]) -> tuple[np.ndarray, list[tuple]]:
    """Per test row, the share of the runs that label it right (0 or 1 for one run), and the rows."""
    found = [correct_on_test(run_dir) for run_dir in run_dirs]
    check_same_rows(run_dirs[0], found[0][1], run_dirs[1:], [rows for _, rows in found[1:]])
    return np.mean([right for right, _ in found], axis=0), found[0][1]


def check_same_rows(first: Path, first_rows: list[tuple], others: list[Path], other_rows: list[list[tuple]]) -> None:
    for other, rows in zip(others, other_rows):
        if rows != first_rows:
            at = next((i for i, (a, b) in enumerate(zip(first_rows, rows)) if a != b), min(len(first_rows), len(rows)))
            raise SystemExit(
                f"{first} and {other}: their test rows differ ({len(first_rows)} and "
                f"{len(rows)} rows, first at row {at}); expected runs on the same data set"
            )


def compare(
    model_right: np.ndarray, baseline_right: np.ndarray, resamples: int, seed: int, single_runs: bool = True
) -> dict:
    """Accuracy difference (model − baseline) with its paired bootstrap 95% interval; with one run a
    side (``single_runs``), the exact McNemar p-value (two-sided binomial test on the discordant rows)."""
    rng = np.random.default_rng(seed)
    difference = model_right.astype(float) - baseline_right.astype(float)
    boot = np.concatenate(
        [
            difference[rng.integers(len(difference), size=(min(1000, resamples - start), len(difference)))].mean(1)
            for start in range(0, resamples, 1000)
        ]
    )  # in chunks: memory stays small
    result = {
        "n": len(difference),
        "model_accuracy": float(model_right.mean()),
        "baseline_accuracy": float(baseline_right.mean()),
        "difference": float(difference.mean()),
        "interval_95": [float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))],
        "only_model_right": None,
        "only_baseline_right": None,
        "mcnemar_p": None,
        "resamples": resamples,
        "seed": seed,
    }
    if single_runs:
        model_right, baseline_right = model_right.astype(bool), baseline_right.astype(bool)
        only_model, only_baseline = (
            int((model_right & ~baseline_right).sum()),
            int((~model_right & baseline_right).sum()),
        )
        discordant = only_model + only_baseline
        result.update(
            only_model_right=only_model,
            only_baseline_right=only_baseline,
            mcnemar_p=float(binomtest(only_model, discordant).pvalue) if discordant else 1.0,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs",
        nargs="+",
        required=True,
        help="MODEL:BASELINE run folders; a side may list several runs (seeds), comma-separated",
    )
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.resamples < 1:
        parser.error(f"--resamples {args.resamples}: expected at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    transformers.utils.logging.set_verbosity_error()
    pairs = []
    for pair in args.pairs:
        model_dir, sep, baseline_dir = pair.partition(":")
        if not sep or not model_dir or not baseline_dir:
            parser.error(f"--pairs {pair!r}: expected MODEL:BASELINE, two run folders")
        sides = [model_dir.split(","), baseline_dir.split(",")]
        for side in sides:
            if "" in side or len({Path(d).resolve() for d in side}) < len(side):
                parser.error(f"--pairs {pair!r}: expected run folders separated by commas, none empty, none twice")
        pairs.append(tuple([Path(d) for d in side] for side in sides))

    path = RESULTS / "paired_accuracy.json"
    rows = json.loads(path.read_text())["pairs"] if path.is_file() else {}
    for model_dirs, baseline_dirs in pairs:
        model_right, model_rows = right_on_test(model_dirs)
        baseline_right, baseline_rows = right_on_test(baseline_dirs)
        check_same_rows(model_dirs[0], model_rows, [baseline_dirs[0]], [baseline_rows])
        name = f"{side_name(model_dirs)} vs {side_name(baseline_dirs)}"
        rows[name] = {
            "model": [str(d.resolve()) for d in model_dirs],
            "baseline": [str(d.resolve()) for d in baseline_dirs],
            **compare(
                model_right,
                baseline_right,
                args.resamples,
                args.seed,
                single_runs=len(model_dirs) == len(baseline_dirs) == 1,
            ),
            "command": f"python bench/paired_accuracy.py --pairs {','.join(map(str, model_dirs))}:"
            f"{','.join(map(str, baseline_dirs))} --resamples {args.resamples} --seed {args.seed}",
        }
        print(
            f"{name}: {json.dumps({k: v for k, v in rows[name].items() if k not in ('model', 'baseline')})}", flush=True
        )
    result = {"machine": {"platform": platform.platform(), "torch": torch.__version__}, "pairs": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(relative_paths(result), indent=2))
    (RESULTS / "paired_accuracy.md").write_text(markdown(rows))
    print(markdown(rows), flush=True)


def side_name(run_dirs: list[Path]) -> str:
    """The first run's folder name; more runs (seeds) named after it by what their names add."""
    first, *others = [d.name.removeprefix("bench-cebab-") for d in run_dirs]
    added = [n.removeprefix(first + "-") for n in others]
    return first if not others else f"{first} (mean with {', '.join(added)})"


def markdown(rows: dict) -> str:
    lines = [
        "# Task accuracy against the black box on the same test rows (paired)",
        "",
        "Difference: model − baseline, in points; 95% interval: paired bootstrap over the test rows; "
        "McNemar: exact two-sided test on the rows only one of the two labels right (one run a side). "
        "A side of several runs (seeds) counts each row as the share of its runs that label it right; "
        "its interval then says how much the test set's sampling moves the seed mean, not how much seeds do.",
        "",
        "| model vs baseline | test rows | model | baseline | difference | 95% interval | only model right | only baseline right | McNemar p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        low, high = r["interval_95"]
        counts = [("–" if r[key] is None else f"{r[key]}") for key in ("only_model_right", "only_baseline_right")]
        p = "–" if r["mcnemar_p"] is None else f"{r['mcnemar_p']:.2f}"
        lines.append(
            f"| {name} | {r['n']} | {r['model_accuracy']:.1%} | {r['baseline_accuracy']:.1%} | "
            f"{100 * r['difference']:+.1f} | [{100 * low:+.1f}, {100 * high:+.1f}] | {counts[0]} | {counts[1]} | {p} |"
        )
    lines += ["", "Commands:", "", *[f"- {name}: `{r['command']}`" for name, r in rows.items()]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
