"""Are the explanations true? The evaluation suite (faithfulness, causal concept effects,
intervention curves) on the saved CEBaB runs of the earlier benchmarks; inference only.

    python bench/evaluation_suite.py [--runs runs/bench-cebab-joint ...] [--samples 50] [--seed 0]

Each run is read as `lucidlm evaluate RUN --suite faithfulness,causal,interventions` reads it
(its own data set, split test); a run folder that does not exist is skipped with a message.
Token faithfulness uses --samples test rows drawn with --seed (the slow part: integrated
gradients per target); everything else uses every row, and the causal suite every
(original → edit) pair of CEBaB dev and test. Writes bench/results/evaluation_suite.{json,md}
and bench/results/intervention_curves.png, after every run.
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

from lucidlm.evaluation import SUITES, render_markdown, run_suite, write_report
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    command = f"python bench/evaluation_suite.py --samples {args.samples} --seed {args.seed}"
    if args.runs != parser.get_default("runs"):
        command += " --runs " + " ".join(_shown(r) for r in args.runs)
    results, seconds, missing = {}, {}, []
    for run_dir in args.runs:
        if not run_dir.is_dir():
            print(f"{_shown(run_dir)}: no such run, skipped", flush=True)
            missing.append(_shown(run_dir))
            continue
        start = time.perf_counter()
        model, record = load_run(run_dir)
        task = load_experiment_task(record["experiment"]["data"])
        name = run_dir.name.removeprefix("bench-cebab-")
        results[name] = run_suite(model, task, SUITES, split="test", samples=args.samples, seed=args.seed, cebab=args.cebab)
        seconds[name] = time.perf_counter() - start
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
        write(results, seconds, missing, command)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def write(results: dict, seconds: dict, missing: list[str], command: str) -> None:
    title = "Are the explanations true? The saved CEBaB runs, test split"
    written = write_report(results, RESULTS, command, FILES, title)
    record = json.loads(written["json"].read_text())
    record.update(seconds=seconds, runs_missing=missing,
                  machine={"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()})
    written["json"].write_text(json.dumps(record, indent=2))
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in seconds.items())
    notes = [f"Seconds per run (CPU, {torch.get_num_threads()} thread(s)): {timing}."]
    if missing:
        notes.append(f"Runs not found, skipped: {', '.join(missing)}.")
    markdown = render_markdown(results, title, command)
    head, sep, rest = markdown.partition("\n## ")  # the notes go under the first table
    written["markdown"].write_text(head.rstrip("\n") + "\n\n" + "\n".join(notes) + "\n" + sep + rest)
    print(f"wrote {', '.join(str(p.relative_to(ROOT)) for p in written.values())}", flush=True)


if __name__ == "__main__":
    main()
