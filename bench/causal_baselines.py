"""Causal concept effects on CEBaB against baselines computed on the same model: the model's own
concept intervention beside CEBaB's S-learner, approximate-counterfactual matching and the
average training effect, under both pair protocols (original → edit, and CEBaB's full one).

    python bench/causal_baselines.py [--runs runs/bench-cebab-joint ...] [--pairs originals all]

Runs named <model>-seed<s> (bench/cebab_bottleneck.py --seeds) are also summarised over seeds.

Writes bench/results/causal_baselines.{json,md}, merging runs measured now into earlier ones.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import transformers
from common import relative_paths  # noqa: E402 (bench/ is on the path)

from lucidlm.evaluation import run_suite
from lucidlm.experiment import load_experiment_task, load_run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CEBAB = ROOT.parent / "shared" / "data" / "cebab"
ESTIMATORS = ("concept_intervention", "subnetwork_rewiring", "s_learner", "matching", "average_training_effect")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs",
        nargs="+",
        type=Path,
        default=[ROOT / "runs" / "bench-cebab-joint", ROOT / "runs" / "bench-cebab-intcem"],
    )
    parser.add_argument("--pairs", nargs="+", choices=("originals", "all"), default=["originals", "all"])
    parser.add_argument("--cebab", type=Path, default=CEBAB)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    results_file = RESULTS / "causal_baselines.json"
    result = json.loads(results_file.read_text()) if results_file.is_file() else {"runs": {}}
    for run in (r.resolve() for r in args.runs):
        model, record = load_run(run)
        task = load_experiment_task(record["experiment"]["data"])
        for protocol in args.pairs:
            start = time.perf_counter()
            suite = run_suite(
                model, task, ["causal"], cebab=args.cebab, causal_splits=("test",), pair_protocol=protocol
            )
            result["runs"].setdefault(run.name.removeprefix("bench-cebab-"), {})[protocol] = {
                "causal": suite["causal"],
                "seconds": time.perf_counter() - start,
                "command": f"python bench/causal_baselines.py --runs {run.relative_to(ROOT)} --pairs {protocol}",
            }
            RESULTS.mkdir(parents=True, exist_ok=True)
            results_file.write_text(json.dumps(relative_paths(result), indent=2))
            (RESULTS / "causal_baselines.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "# Causal concept effects on CEBaB test, against baselines on the same model",
        "",
        "Each estimator predicts the model's own effect ICaCE = p(y | target) − p(y | source) without seeing the target text; "
        "scores are L2 / cosine distance / norm difference to ICaCE, lower is better (`lucidlm evaluate --suite causal`). "
        "`originals`: (original → edit) pairs; `all`: CEBaB's full protocol (every ordered pair of texts sharing an "
        "original that differ in exactly one aspect). Baselines are fitted on `train_inclusive` with the same model's outputs.",
        "",
        "| model | pairs | n | ‖ICaCE‖ | " + " | ".join(ESTIMATORS) + " |",
        "|---|---|---|---|" + "---|" * len(ESTIMATORS),
    ]
    for name, protocols in result["runs"].items():
        for protocol, row in protocols.items():
            test = row["causal"]["splits"]["test"]
            cells = []
            for estimator in ESTIMATORS:
                o = test["estimators"].get(estimator, {}).get("overall")
                cells.append(f"{o['l2']:.3f} / {o['cosine']:.3f} / {o['norm_diff']:.3f}" if o else "–")
            lines.append(
                f"| {name} | {protocol} | {test['n_pairs']} | {test['icace_norm']['overall']['mean']:.3f} | "
                + " | ".join(cells)
                + " |"
            )
    best = []
    for name, protocols in result["runs"].items():
        for protocol, row in protocols.items():
            estimators = row["causal"]["splits"]["test"]["estimators"]
            for score in ("l2", "cosine", "norm_diff"):
                ranked = sorted(
                    (e for e in ESTIMATORS if "overall" in estimators.get(e, {})),
                    key=lambda e: estimators[e]["overall"][score],
                )
                best.append(f"{name}, {protocol}, {score}: {ranked[0]}")
    lines += ["", "Best estimator per score: " + "; ".join(best) + "."]
    lines += over_seeds(result)
    lines += ["", "Commands:", ""]
    lines += [
        f"- `{row['command']}` ({row['seconds']:.0f} s)"
        for protocols in result["runs"].values()
        for row in protocols.values()
    ]
    return "\n".join(lines) + "\n"


def over_seeds(result: dict) -> list[str]:
    """Mean ± standard deviation (ddof 1) over the runs of one model trained with several seeds
    (runs named ``<model>-seed<s>`` beside ``<model>``, the configs' seed 0)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for name, protocols in result["runs"].items():
        for protocol, row in protocols.items():
            groups.setdefault((re.sub(r"-seed\d+$", "", name), protocol), []).append(
                row["causal"]["splits"]["test"]["estimators"]
            )
    groups = {key: group for key, group in groups.items() if len(group) > 1}
    if not groups:
        return []
    lines = [
        "",
        "Over seeds (mean ± standard deviation of L2 / cosine distance / norm difference):",
        "",
        "| model | pairs | seeds | " + " | ".join(ESTIMATORS) + " |",
        "|---|---|---|" + "---|" * len(ESTIMATORS),
    ]
    for (name, protocol), group in groups.items():
        cells = []
        for estimator in ESTIMATORS:
            if any("overall" not in g.get(estimator, {}) for g in group):
                cells.append("–")
                continue
            scores = [[g[estimator]["overall"][d] for g in group] for d in ("l2", "cosine", "norm_diff")]
            cells.append(" / ".join(f"{np.mean(x):.3f} ± {np.std(x, ddof=1):.3f}" for x in scores))
        lines.append(f"| {name} | {protocol} | {len(group)} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
