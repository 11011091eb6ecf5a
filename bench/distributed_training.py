"""The README's two-process command against one process, on CEBaB with the default model: test
accuracy and wall time of each, measured in the same invocation.

    python bench/distributed_training.py [--config configs/cebab-joint.yaml] [--processes 2]

One process runs ``python -m lucidlm.cli train CONFIG``; N processes run
``torchrun --nproc_per_node N -m lucidlm.cli train CONFIG`` (CPU processes over gloo where there
is no GPU). Both read the same config: ``batch_size`` is the global batch. Writes
bench/results/distributed_training.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def train(command: list[str], run: Path) -> dict:
    start = time.perf_counter()
    result = subprocess.run(
        [*command, "-o", str(run), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "ACCELERATE_USE_CPU": os.environ.get("ACCELERATE_USE_CPU", "1")},
    )
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    metrics = json.loads(result.stdout)["metrics"]
    epochs = [json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines()]
    shown = " ".join("python" if part == sys.executable else part for part in command)
    return {
        "command": shown,
        "seconds": seconds,
        "test": metrics["test"]["task"],
        "dev": metrics["dev"]["task"],
        "epochs": [e for e in epochs if e["event"] == "epoch"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/cebab-joint.yaml")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--one-process-row",
        metavar="MODE",
        help="take the one-process figures from this row of bench/results/cebab_bottleneck.json "
        "(trained from the same config) instead of training again; its time is then not comparable",
    )
    args = parser.parse_args()
    name = Path(args.config).stem
    if args.one_process_row:
        row = json.loads((RESULTS / "cebab_bottleneck.json").read_text())["modes"][args.one_process_row]
        one = {
            "command": row["command"],
            "seconds": row["train_seconds"],
            "test": row["test"]["task"],
            "dev": row["dev"]["task"],
            "epochs": [None] * row["epochs_run"],
            "earlier": True,
        }
    else:
        one = train([sys.executable, "-m", "lucidlm.cli", "train", args.config], ROOT / "runs" / f"bench-{name}-1proc")
    rows = {
        "1 process": one,
        f"{args.processes} processes": train(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(args.processes),
                "-m",
                "lucidlm.cli",
                "train",
                args.config,
            ],
            ROOT / "runs" / f"bench-{name}-{args.processes}proc",
        ),
    }
    command = f"python bench/distributed_training.py --config {args.config} --processes {args.processes}"
    result = {
        "command": command + (f" --one-process-row {args.one_process_row}" if args.one_process_row else ""),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distributed_training.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "distributed_training.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    rows = result["rows"]
    base = rows["1 process"]["seconds"]
    lines = [
        f"# Data-parallel training on CEBaB ({result['machine']['cpus']} CPUs, no GPU)",
        "",
        f"Command: `{result['command']}`. The same config (global batch 16) in one process and over "
        "several (each takes its share of every batch; gloo), measured one after the other.",
        "",
        "| run | command | test acc | test macro-F1 | dev acc | epochs | wall s | time vs 1 process |",
        "|---|---|---|---|---|---|---|---|",
    ]
    earlier = rows["1 process"].get("earlier")
    for name, row in rows.items():
        ratio = "–" if earlier else f"{row['seconds'] / base:.2f}×"
        lines.append(
            f"| {name} | `{row['command']}` | {row['test']['accuracy']:.1%} | "
            f"{row['test']['macro_f1']:.3f} | {row['dev']['accuracy']:.1%} | {len(row['epochs'])} | {row['seconds']:.0f} | {ratio} |"
        )
    if earlier:
        lines += [
            "",
            "The one-process row is the committed `cebab_bottleneck` row of the same config (an earlier run, "
            "another load on the machine): its accuracy compares, its time does not.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
