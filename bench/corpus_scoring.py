"""`lucidlm predict RUN --input` on a corpus of CEBaB-sized rows (issue 33): one process, two
processes (torchrun, CPU over gloo), and one process killed (SIGKILL) halfway and started again;
the three output files must be byte for byte the same. Rows per second of each beside one
process's, measured in the same run.

    python bench/corpus_scoring.py [--run runs/bench-cebab-intcem] [--rows 10000]

Writes bench/results/corpus_scoring.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def predict(run: Path, source: Path, out: Path, processes: int = 1) -> tuple[subprocess.Popen, float]:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // processes))}
    launcher = (
        [sys.executable]
        if processes == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            str(free_port()),
        ]
    )
    command = [*launcher, "-m", "lucidlm.cli", "predict", str(run), "--input", str(source), "-o", str(out)]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ), time.perf_counter()


def finished(process: subprocess.Popen, started: float) -> float:
    _, err = process.communicate()
    if process.returncode:
        raise SystemExit(err[-2000:])
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-cebab-intcem")
    parser.add_argument("--rows", type=int, default=10_000)
    args = parser.parse_args()
    from lucidlm import load_task

    task = load_task("cebab", path=ROOT.parent / "shared" / "data" / "cebab")
    texts = task.train.texts
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        source = folder / "corpus.parquet"
        pd.DataFrame({"text": [texts[i % len(texts)] for i in range(args.rows)]}).to_parquet(source, index=False)
        seconds = {"one process": finished(*predict(args.run, source, folder / "one.csv"))}
        seconds["two processes"] = finished(*predict(args.run, source, folder / "two.csv", processes=2))
        killed, started = predict(args.run, source, folder / "resumed.csv")
        parts = folder / "resumed.csv.parts"
        half = (args.rows // 1024 + 1) // 2
        while killed.poll() is None and len(list(parts.glob("0*.jsonl"))) < half:
            time.sleep(0.2)
        killed.send_signal(signal.SIGKILL)
        killed.communicate()
        kept = len(list(parts.glob("0*.jsonl")))
        seconds["killed at half, then resumed"] = time.perf_counter() - started
        resumed, again = predict(args.run, source, folder / "resumed.csv")
        seconds["killed at half, then resumed"] += finished(resumed, again)
        one = (folder / "one.csv").read_bytes()
        result = {
            "command": "python bench/corpus_scoring.py " + " ".join(sys.argv[1:]),
            "rows": args.rows,
            "run": str(args.run.relative_to(ROOT)),
            "chunks_kept_at_the_kill": kept,
            "seconds": seconds,
            "same_file": {
                "two processes": (folder / "two.csv").read_bytes() == one,
                "killed at half, then resumed": (folder / "resumed.csv").read_bytes() == one,
            },
            "output_rows": len(pd.read_csv(folder / "one.csv")),
        }
    lines = [
        f"# `lucidlm predict RUN --input`: {args.rows:,} CEBaB training texts ({result['run']})",
        "",
        "| how | seconds | rows/s | × one process | same file as one process |",
        "|---|---|---|---|---|",
    ]
    for how, s in seconds.items():
        same = "–" if how == "one process" else ("yes" if result["same_file"][how] else "NO")
        lines.append(f"| {how} | {s:.1f} | {args.rows / s:.0f} | {seconds['one process'] / s:.2f} | {same} |")
    lines += [
        "",
        f"The killed run was stopped with SIGKILL once {kept} of its chunks (1,024 rows each) were written; "
        f"the file has {result['output_rows']:,} rows. Command: `{result['command']}`",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "corpus_scoring.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "corpus_scoring.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
