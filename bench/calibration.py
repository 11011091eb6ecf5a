"""Calibration of every family on CEBaB: the label's (and concepts') probabilities before and after
the temperature fitted on dev (docs/methods.md §7.2), on dev and test.

    python bench/calibration.py [--configs cebab-intcem cebab-standard ...]

Each config trains as `lucidlm train configs/<name>.yaml` does (seed 0, its own settings) into
runs/bench-calibration-<name>, or is read back from there when that run exists. Temperature
scaling leaves every argmax, so every accuracy, as it was; the table shows what the
probabilities were worth before (T = 1) and after. Writes bench/results/calibration.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import numpy as np
import torch
import transformers

from lucidlm import load_pretrained
from lucidlm.calibration import Temperatures, calibration_figures
from lucidlm.data import MISSING
from lucidlm.experiment import RUN_FILE, load_experiment_task, read_experiment, run_experiment
from lucidlm.models import ConceptModel

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CONFIGS = (
    "cebab-intcem",
    "cebab-standard",
    "cebab-joint",
    "cebab-cem",
    "cebab-proto",
    "cebab-sparse",
    "cebab-label-free",
)


def figures(model, split, temperatures: Temperatures) -> dict:
    """Task accuracy, mean confidence, share above 0.95, ECE and NLL of the label; mean ECE of the
    concepts (concept models) under ``temperatures``."""
    model.temperatures = temperatures
    inferred = model.infer(split)
    logits = inferred["label_logits"]
    probs = torch.from_numpy(logits).softmax(-1).numpy()
    label = calibration_figures(logits, split.labels)
    row = {
        "accuracy": float((logits.argmax(-1) == split.labels).mean()),
        "confidence": label["confidence"],
        "above_0.95": float((probs.max(-1) > 0.95).mean()),
        "ece": label["ece"],
        "nll": label["nll"],
    }
    if isinstance(model, ConceptModel):
        eces = []
        for k, spec in enumerate(model.spec.concepts):
            known = split.concepts[:, k] != MISSING
            if known.any():
                t = temperatures.concepts.get(spec.name, 1.0)
                eces.append(
                    calibration_figures(np.asarray(inferred["concept_logits"][k])[known], split.concepts[known, k], t)[
                        "ece"
                    ]
                )
        row["concept_ece"] = float(np.mean(eces))
    return row


def measure(name: str) -> dict:
    run_dir = ROOT / "runs" / f"bench-calibration-{name}"
    experiment = read_experiment(ROOT / "configs" / f"{name}.yaml", output_dir=run_dir)
    started = time.time()
    if (run_dir / RUN_FILE).is_file():
        model = load_pretrained(run_dir)
        trained = False
    else:
        model, _ = run_experiment(experiment)
        trained = True
    task = load_experiment_task(experiment.data)
    fitted = model.temperatures
    row = {
        "config": f"configs/{name}.yaml",
        "family": model.family,
        "temperature": fitted.label,
        "concept_temperatures": fitted.concepts,
        "trained_here": trained,
        "seconds": round(time.time() - started),
    }
    for split_name in ("dev", "test"):
        split = task.split(split_name)
        row[split_name] = {"before": figures(model, split, Temperatures()), "after": figures(model, split, fitted)}
    model.temperatures = fitted
    return row


def markdown(result: dict) -> str:
    lines = [
        "# Calibration on CEBaB: before and after temperature scaling",
        "",
        f"`{result['command']}`; seed 0, each config as `lucidlm train` trains it; T fitted on dev by NLL.",
        "Before: T = 1 (the model as trained). ECE: 15 equal-width confidence bins. Accuracy is the same",
        "before and after (a temperature keeps every argmax). Concept ECE: mean over the concepts, each with its own T.",
        "",
        "| config | family | T | split | accuracy | confidence | share > 0.95 | ECE | NLL | concept ECE |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        for split in ("dev", "test"):
            b, a = row[split]["before"], row[split]["after"]
            pair = lambda key, f="{:.3f}": f"{f.format(b[key])} → {f.format(a[key])}"  # noqa: B023, E731
            concept = pair("concept_ece") if "concept_ece" in b else "–"
            lines.append(
                f"| {row['config']} | {row['family']} | {row['temperature']:.3f} | {split} | {a['accuracy']:.1%} | "
                f"{pair('confidence', '{:.1%}')} | {pair('above_0.95', '{:.1%}')} | {pair('ece')} | {pair('nll')} | {concept} |"
            )
    lines += ["", f"Machine: {result['machine']['platform']}, torch {result['machine']['torch']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    transformers.utils.logging.set_verbosity_error()
    path = RESULTS / "calibration.json"
    rows = {r["config"]: r for r in json.loads(path.read_text())["rows"]} if path.is_file() else {}
    for name in args.configs:
        row = measure(name)
        rows[row["config"]] = row
        print(json.dumps({k: row[k] for k in ("config", "temperature", "dev", "test")}, indent=1), flush=True)
        result = {
            "command": "python bench/calibration.py --configs " + " ".join(sorted(Path(c).stem for c in rows)),
            "machine": {"platform": platform.platform(), "torch": torch.__version__},
            "rows": list(rows.values()),
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        (RESULTS / "calibration.md").write_text(markdown(result))
    print((RESULTS / "calibration.md").read_text())


if __name__ == "__main__":
    main()
