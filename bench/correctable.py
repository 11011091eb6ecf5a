"""Corrections a person can feel (issue 32): for each saved concept model, on dev and test, what a
person who corrects it sees, beside what the aggregate figures say.

- task accuracy, and its difference from standard fine-tuning of the same seed (the
  ``standard`` rows of bench/results/cebab_bottleneck.json);
- the correction gain: accuracy with the misread concepts set to gold, minus accuracy;
- responsiveness (``--suite honesty``): on the rows with a misread concept, the share whose
  label the gold correction changes, and of those the shares changed to and away from gold;
- the concept values' share of the decisions, and the share the values alone make the same;
- expected calibration error after the run's temperature scaling;
- on test, the model's own intervention as an estimator of its causal concept effects beside
  the S-learner and matching fitted on the same model (``--suite causal``; L2 / cosine / norm
  difference, lower is better), for each pair protocol asked;
- the two sentences of issue 32 as a person types them into the page, with the corrections
  given there: the label and its probability before and after.

    python bench/correctable.py --runs runs/bench-cebab-intcem ... [--pairs originals all]

Runs named <model>-seed<s> (bench/cebab_bottleneck.py --seeds) are also summarised over seeds.
Writes bench/results/correctable.{json,md}, merging runs measured now into earlier ones.
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
ESTIMATORS = ("concept_intervention", "s_learner", "matching")
TYPED = (
    ("The food was terrible and the service was awful.", {"food": "Positive", "service": "Positive"}),
    ("The pasta was great but the waiter was rude.", {"food": "Negative", "service": "Positive"}),
)


def seed_of(name: str) -> int:
    found = re.search(r"-seed(\d+)$", name)
    return int(found.group(1)) if found else 0


def standard_accuracy(seed: int, split: str, augmented: bool = False) -> float | None:
    """Standard fine-tuning's accuracy of ``seed`` on the run's data set (its own test rows for the
    13-concept data; bench/results/cebab_bottleneck.json), if measured."""
    modes = json.loads((RESULTS / "cebab_bottleneck.json").read_text())["modes"]
    mode = "standard-augmented" if augmented else "standard"
    row = modes.get(mode if seed == 0 else f"{mode}, seed {seed}")
    return None if row is None else row[split]["task"]["accuracy"]


def measure(run: Path, pairs: list[str], cebab: Path) -> dict:
    model, record = load_run(run)
    task = load_experiment_task(record["experiment"]["data"])
    name = run.name.removeprefix("bench-cebab-")
    out = {
        "summary": model.summary(),
        "splits": {},
        "causal": {},
        "command": f"python bench/correctable.py --runs {run.relative_to(ROOT)} --pairs {' '.join(pairs)}",
    }
    start = time.perf_counter()
    for split in ("dev", "test"):
        suite = run_suite(model, task, ["honesty"], split=split)
        honesty = suite["honesty"]
        gold = model.evaluate(task.split(split))["task_gold_concepts"]["accuracy"]
        standard = standard_accuracy(seed_of(name), split, augmented="augmented" in name)
        out["splits"][split] = {
            "task_accuracy": suite["task"]["accuracy"],
            "ece": suite["task"].get("ece"),
            "versus_standard": None if standard is None else suite["task"]["accuracy"] - standard,
            "correction_gain": gold - suite["task"]["accuracy"],
            "responsiveness": honesty["responsiveness"],
            "concept_values_share": honesty["concept_values_share"],
            "decisions_from_values_alone": honesty["decisions_from_values_alone"],
        }
    out["typed"] = []
    for text, values in TYPED:
        r = model.intervene(text, values)[0]
        out["typed"].append(
            {
                "text": text,
                "set": values,
                "before": [r.before.label, r.before.probabilities[r.before.label]],
                "after": [r.after.label, r.after.probabilities[r.after.label]],
            }
        )
    for protocol in pairs:
        causal = run_suite(model, task, ["causal"], cebab=cebab, causal_splits=("test",), pair_protocol=protocol)[
            "causal"
        ]
        estimators = causal["splits"]["test"]["estimators"]
        out["causal"][protocol] = {
            e: estimators[e]["overall"] for e in ESTIMATORS if "overall" in estimators.get(e, {})
        }
    out["seconds"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, default=[ROOT / "runs" / "bench-cebab-intcem"])
    parser.add_argument("--pairs", nargs="+", choices=("originals", "all"), default=["originals", "all"])
    parser.add_argument("--cebab", type=Path, default=CEBAB)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    results_file = RESULTS / "correctable.json"
    result = json.loads(results_file.read_text()) if results_file.is_file() else {"runs": {}}
    for run in (r.resolve() for r in args.runs):
        result["runs"][run.name.removeprefix("bench-cebab-")] = measure(run, args.pairs, args.cebab)
        RESULTS.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(relative_paths(result), indent=2))
        (RESULTS / "correctable.md").write_text(markdown(result))
    print(markdown(result))


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _pp(x) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def scores(row: dict, protocol: str, estimator: str) -> str:
    o = row["causal"].get(protocol, {}).get(estimator)
    return f"{o['l2']:.3f} / {o['cosine']:.3f} / {o['norm_diff']:.3f}" if o else "–"


def markdown(result: dict) -> str:
    lines = [
        "# Corrections a person can feel: accuracy, correction gain, responsiveness, causal faithfulness",
        "",
        "CEBaB, all-MiniLM-L6-v2, runs of `bench/cebab_bottleneck.py` (their names: the mode and its options). "
        "vs standard: task accuracy minus standard fine-tuning's of the same seed, points. Gain: accuracy with the "
        "misread concepts set to gold minus accuracy, points. Changed: of the rows with a misread concept, the share "
        "whose label the gold correction changes; to / away: of the changed labels, the shares changed to the gold "
        "label and away from it. Values: the concept values' mean share of the decisions; alone: the share of "
        "decisions the values alone make the same. ECE after temperature scaling (15 bins). Causal (test, L2 / "
        "cosine / norm difference to the model's own ICaCE, lower is better): the model's own intervention, the "
        "S-learner and matching fitted on the same model.",
        "",
        "| run | split | task acc | vs standard | gain | changed | to gold | away | values | alone | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["runs"].items():
        for split, s in row["splits"].items():
            r = s["responsiveness"]
            lines.append(
                f"| {name} | {split} | {100 * s['task_accuracy']:.1f}% | {_pp(s['versus_standard'])} | "
                f"{_pp(s['correction_gain'])} | {_f(r['changed_share'])} | {_f(r['to_gold_share'])} | "
                f"{_f(r['away_from_gold_share'])} | {_f(s['concept_values_share'])} | "
                f"{_f(s['decisions_from_values_alone'])} | {_f(s['ece'])} |"
            )
    protocols = sorted({p for row in result["runs"].values() for p in row["causal"]})
    lines += [
        "",
        "| run | pairs | own intervention | S-learner | matching | own beats both on all three |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in result["runs"].items():
        for protocol in protocols:
            if protocol not in row["causal"]:
                continue
            c = row["causal"][protocol]
            beats = (
                all(
                    c["concept_intervention"][d] < min(c[e][d] for e in ("s_learner", "matching"))
                    for d in ("l2", "cosine", "norm_diff")
                )
                if len(c) == 3
                else None
            )
            lines.append(
                f"| {name} | {protocol} | "
                + " | ".join(scores(row, protocol, e) for e in ESTIMATORS)
                + f" | {'yes' if beats else 'no' if beats is not None else '–'} |"
            )
    lines += over_seeds(result)
    lines += [
        "",
        "Typed on the page, with the corrections given (label, its probability):",
        "",
        "| run | text | set | before | after |",
        "|---|---|---|---|---|",
    ]
    for name, row in result["runs"].items():
        for t in row.get("typed", []):
            values = ", ".join(f"{k} = {v}" for k, v in t["set"].items())
            lines.append(
                f"| {name} | {t['text']} | {values} | {t['before'][0]} ({t['before'][1]:.2f}) | "
                f"{t['after'][0]} ({t['after'][1]:.2f}) |"
            )
    lines += ["", "Commands:", ""] + [
        f"- `{row['command']}` ({row['seconds']:.0f} s)" for row in result["runs"].values()
    ]
    return "\n".join(lines) + "\n"


def over_seeds(result: dict) -> list[str]:
    """Mean ± standard deviation (ddof 1) over the seeds of each configuration, dev and test; and
    the three causal scores' means for the model's own intervention and both baselines."""
    groups: dict[str, list[dict]] = {}
    for name, row in result["runs"].items():
        groups.setdefault(re.sub(r"-seed\d+$", "", name), []).append(row)
    groups = {k: g for k, g in groups.items() if len(g) > 1}
    if not groups:
        return []

    def stat(values, scale=1.0, digits=3) -> str:
        values = [v for v in values if v is not None]
        return (
            f"{scale * np.mean(values):.{digits}f} ± {scale * np.std(values, ddof=1):.{digits}f}"
            if len(values) > 1
            else "–"
        )

    lines = [
        "",
        "Over seeds (mean ± standard deviation; accuracy, vs standard and gain in points):",
        "",
        "| run | seeds | split | task acc | vs standard | gain | changed | to gold | away | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, group in groups.items():
        for split in ("dev", "test"):
            rows = [g["splits"][split] for g in group]
            r = [t["responsiveness"] for t in rows]
            lines.append(
                f"| {name} | {len(group)} | {split} | {stat([t['task_accuracy'] for t in rows], 100, 1)} | "
                f"{stat([t['versus_standard'] for t in rows], 100, 1)} | {stat([t['correction_gain'] for t in rows], 100, 1)} | "
                f"{stat([x['changed_share'] for x in r])} | {stat([x['to_gold_share'] for x in r])} | "
                f"{stat([x['away_from_gold_share'] for x in r])} | {stat([t['ece'] for t in rows])} |"
            )
    lines += [
        "",
        "Over seeds, test, `--pairs originals`: mean L2 / cosine / norm difference to the model's own ICaCE "
        "(lower is better):",
        "",
        "| run | seeds | own intervention | S-learner | matching | own beats both on all three |",
        "|---|---|---|---|---|---|",
    ]
    for name, group in groups.items():
        means = {}
        for e in ESTIMATORS:
            scores = [g["causal"].get("originals", {}).get(e) for g in group]
            if all(scores):
                means[e] = {k: float(np.mean([x[k] for x in scores])) for k in ("l2", "cosine", "norm_diff")}
        cells = [
            " / ".join(f"{means[e][k]:.3f}" for k in ("l2", "cosine", "norm_diff")) if e in means else "–"
            for e in ESTIMATORS
        ]
        beats = (
            all(
                means["concept_intervention"][k] < min(means["s_learner"][k], means["matching"][k])
                for k in ("l2", "cosine", "norm_diff")
            )
            if len(means) == 3
            else None
        )
        lines.append(
            f"| {name} | {len(group)} | "
            + " | ".join(cells)
            + f" | {'yes' if beats else 'no' if beats is not None else '–'} |"
        )
    return lines


if __name__ == "__main__":
    main()
