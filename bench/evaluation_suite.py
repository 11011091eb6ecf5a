"""Are the explanations true? The evaluation suite (faithfulness, causal concept effects,
intervention curves) on the saved CEBaB runs of the earlier benchmarks; inference only.

    python bench/evaluation_suite.py [--runs runs/bench-cebab-joint ...] [--samples 50] [--seed 0] [--merge]
                                     [--suites interventions,honesty]

Each run is read as `lucidlm evaluate RUN --suite faithfulness,causal,interventions,honesty,concepts` reads it
(its own data set, split test); a run folder that does not exist is skipped with a message.
Token faithfulness uses --samples test rows drawn with --seed (the slow part: integrated
gradients per target); everything else uses every row, and the causal suite every
(original → edit) pair of CEBaB dev and test. Writes bench/results/evaluation_suite.{json,md}
and bench/results/intervention_curves.png, after every run; ``--merge`` keeps the runs already
there (measured with the same --samples and --seed) and adds or replaces the ones given;
with ``--suites``, only those suites of a run are measured again and the rest of its results
kept (each run lists every command that measured part of it).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch
import transformers
from common import relative_paths, standard_rows  # noqa: E402 (bench/ is on the path)

from lucidlm.evaluation import SUITES, parse_suites, run_suite, write_report
from lucidlm.experiment import load_experiment_task, load_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CEBAB = ROOT.parent / "shared" / "data" / "cebab"
RUNS = ["standard", "joint", "sequential", "independent", "joint-augmented", "proto", "sparse-0.7", "sparse-0.5"]
FILES = {"json": "evaluation_suite.json", "markdown": "evaluation_suite.md", "plot": "intervention_curves.png"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, default=[ROOT / "runs" / f"bench-cebab-{r}" for r in RUNS])
    parser.add_argument("--samples", type=int, default=50, help="test rows for token faithfulness")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cebab", type=Path, default=CEBAB, help="CEBaB's folder (the causal suite's pairs)")
    parser.add_argument("--merge", action="store_true", help="keep the runs already in the results file")
    parser.add_argument(
        "--suites",
        default=",".join(SUITES),
        help=f"comma-separated, of {list(SUITES)}; fewer than all needs --merge and keeps a run's other results",
    )
    parser.add_argument(
        "--black-box-accuracy",
        type=float,
        default=None,
        help="the black box's test accuracy for completeness (default: per run, the standard "
        "model's row of bench/results/cebab_bottleneck.json on the run's data set and seed, else seed 0's)",
    )
    args = parser.parse_args()
    suites = parse_suites(args.suites)
    if len(suites) < len(SUITES) and not args.merge:
        parser.error(
            f"--suites {args.suites}: measuring part of the suites keeps the rest of each run's results; add --merge"
        )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    command = f"python bench/evaluation_suite.py --samples {args.samples} --seed {args.seed}"
    if args.black_box_accuracy is not None:
        command += f" --black-box-accuracy {args.black_box_accuracy:g}"
    if args.runs != parser.get_default("runs"):
        command += " --runs " + " ".join(_shown(r) for r in args.runs)
    if len(suites) < len(SUITES):
        command += f" --suites {','.join(suites)}"
    results, seconds, commands, missing = {}, {}, {}, []
    black_boxes = standard_test_accuracies()
    if args.merge:
        command += " --merge"
        results, seconds, commands = earlier_results(args.samples, args.seed)
    for run_dir in args.runs:
        if not run_dir.is_dir():
            print(f"{_shown(run_dir)}: no such run, skipped", flush=True)
            missing.append(_shown(run_dir))
            continue
        start = time.perf_counter()
        model, record = load_run(run_dir)
        task = load_experiment_task(record["experiment"]["data"])
        name = run_dir.name.removeprefix("bench-cebab-")
        black_box = args.black_box_accuracy
        if black_box is None:
            source, seed = record["experiment"]["data"]["source"], record["experiment"]["training"]["seed"]
            black_box = black_boxes.get((source, seed), black_boxes.get((source, 0)))
            if black_box is not None and (source, seed) not in black_boxes:
                print(
                    f"{_shown(run_dir)}: no standard row of seed {seed} on its data set; completeness reads seed 0's",
                    flush=True,
                )
            if black_box is None:
                print(
                    f"{_shown(run_dir)}: no standard row on its data set in cebab_bottleneck.json; completeness "
                    "divides by the model's own accuracy",
                    flush=True,
                )
        partly = len(suites) < len(SUITES)
        if partly and name not in results:
            raise SystemExit(f"{_shown(run_dir)}: not in {RESULTS / FILES['json']}; measure all its suites first")
        measured = run_suite(
            model,
            task,
            suites,
            split="test",
            samples=args.samples,
            seed=args.seed,
            cebab=args.cebab,
            black_box_accuracy=black_box,
        )
        if partly:  # the run's other suites stay as they were measured; its seconds are the full run's
            kept = results[name]
            measured = {**kept, **measured, "suites": [s for s in SUITES if s in kept["suites"] or s in suites]}
            commands[name] = [*(c for c in commands.get(name, []) if c != command), command]
        else:
            seconds[name] = {"seconds": time.perf_counter() - start, "threads": torch.get_num_threads()}
            commands[name] = [command]
        results[name] = measured
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        write(results, seconds, commands, missing)


def standard_test_accuracies() -> dict[tuple[str, int], float]:
    """Per data set and seed, the test accuracy of standard fine-tuning's row in
    bench/results/cebab_bottleneck.json (``standard_rows``)."""
    path = RESULTS / "cebab_bottleneck.json"
    rows = json.loads(path.read_text())["modes"] if path.is_file() else {}
    return {key: row["test"]["task"]["accuracy"] for key, row in standard_rows(rows).items()}


def earlier_results(samples: int, seed: int) -> tuple[dict, dict, dict]:
    """The results file's runs, their seconds and the command that measured each; refused if
    they were measured with other token-faithfulness rows than ``samples`` and ``seed`` draw."""
    path = RESULTS / FILES["json"]
    record = json.loads(path.read_text())
    results = record["results"]
    for result in results.values():
        # Runs evaluated before the option was named trained with RandInt 0.25 in joint and
        # sequential modes and SparseCBM (``intervention_rate``'s default then).
        model = result["model"]
        model.setdefault("random_intervention_rate", 0.25 if model["mode"] in ("joint", "sequential") else None)
    for name, result in results.items():
        tokens = result.get("faithfulness", {}).get("tokens", {})
        if result["seed"] != seed or tokens.get("n", 0) + tokens.get("left_out", 0) not in (
            0,
            min(samples, result["n"]),
        ):
            raise SystemExit(
                f"{path}: run {name} was measured with other --samples or --seed; rerun it instead of merging"
            )
    commands = record.get("commands") or {name: record["command"] for name in results}
    commands = {name: [c] if isinstance(c, str) else c for name, c in commands.items()}  # files from before --suites
    threads = record.get("machine", {}).get("threads")  # files from before per-run threads
    seconds = {
        name: s if isinstance(s, dict) else {"seconds": s, "threads": threads} for name, s in record["seconds"].items()
    }
    return results, seconds, commands


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write(results: dict, seconds: dict, commands: dict[str, list[str]], missing: list[str]) -> None:
    title = "Are the explanations true? The saved CEBaB runs, test split"
    written = write_report(results, RESULTS, None, FILES, title)
    record = json.loads(written["json"].read_text())
    record.update(
        commands=commands,
        seconds=seconds,
        runs_missing=missing,
        machine={"platform": platform.platform(), "torch": torch.__version__},
    )
    written["json"].write_text(json.dumps(relative_paths(record), indent=2))
    timing = ", ".join(
        f"{name} {s['seconds']:.0f} s ({s['threads']} thread{'s' * (s['threads'] != 1)})" for name, s in seconds.items()
    )
    runs_of = {}  # command -> the runs it measured
    for name, measured_by in commands.items():
        for command in measured_by:
            runs_of.setdefault(command, []).append(name)
    notes = [f"Command: `{c}` ({', '.join(names)})." for c, names in runs_of.items()] + [""]
    notes += [f"Seconds per run on CPU: {timing}."]
    if missing:
        notes.append(f"Runs not found, skipped: {', '.join(missing)}.")
    markdown = written["markdown"].read_text()
    head, sep, rest = markdown.partition("\n## ")  # the notes go under the first table
    written["markdown"].write_text(head.rstrip("\n") + "\n\n" + "\n".join(notes) + "\n" + sep + rest)
    print(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in written.values())}", flush=True)


if __name__ == "__main__":
    main()
