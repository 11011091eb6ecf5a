"""The corrections store under load, over HTTP: 16 concurrent writers × 500 records each against
``lucidlm serve``'s app, on SQLite (the run folder's store) and on PostgreSQL (a throwaway server,
as the tests start it, or --postgres URL). Every tenth record is sent twice, as a client retrying
after a lost answer does. Checks that every record is stored exactly once and that no answer is
5xx; reports records per second per backend, and PostgreSQL's rate as a ratio of SQLite's measured
in the same run (the machine is shared: absolute rates move).

    python bench/corrections_load.py [--writers 16] [--records 500] [--postgres URL]

The model is a tiny random BERT (2 layers, 32 wide): the figure is the store's and the server's,
not a backbone's. Writes bench/results/corrections_load.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import httpx
import torch
import transformers

from lucidlm.corrections import CorrectionStore, add_user
from lucidlm.web.serve import load_app, serving

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CEBAB = ROOT.parent / "shared" / "data" / "cebab"
sys.path.insert(0, str(ROOT / "tests"))  # the tests' throwaway PostgreSQL server and tiny run
from postgres_server import postgres_server  # noqa: E402
from tiny_runs import save_tiny_bert, train_tiny_run  # noqa: E402


def tiny_run(folder: Path) -> Path:
    """A saved joint run on a random 2-layer BERT, trained for seconds on 64 CEBaB rows (the tests' own)."""
    return train_tiny_run(folder, "joint", save_tiny_bert(folder / "tiny-bert"), CEBAB)


def load(url: str, token: str, writers: int, records: int, tag: str) -> dict:
    statuses: dict[int, int] = {}

    def write(w: int) -> list[int]:
        ids = []
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            for n in range(records):
                body = {
                    "text": f"{tag} writer {w}, review {n}: the soup was cold.",
                    "values": {"food": "Negative"},
                    "label": "2",
                    "key": f"{tag}-{w}-{n}",
                }
                for _ in range(2 if n % 10 == 0 else 1):
                    answer = http.post("/api/corrections", json=body)
                    statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
                    if answer.status_code == 200:
                        ids.append(answer.json()["record"]["id"])
        return ids

    start = time.perf_counter()
    with ThreadPoolExecutor(writers) as pool:
        ids = [i for batch in pool.map(write, range(writers)) for i in batch]
    return {"seconds": time.perf_counter() - start, "answers": statuses, "answered_ids": ids}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--records", type=int, default=500, help="per writer")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL (default: start a throwaway server)")
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()

    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        run = tiny_run(Path(folder))
        server = nullcontext(args.postgres) if args.postgres else postgres_server()
        with server as postgres:
            for backend, location in (("sqlite", run), ("postgresql", postgres)):
                store = CorrectionStore(location)
                before = {r.key for r in store.records()}
                token = add_user(store, f"load-{backend}-{int(time.time())}", "corrector")
                with serving(load_app(run, store=store)) as url:
                    measured = load(url, token, args.writers, args.records, backend)
                keys = [r.key for r in store.records() if r.key not in before]
                expected = {f"{backend}-{w}-{n}" for w in range(args.writers) for n in range(args.records)}
                ids = measured.pop("answered_ids")
                rows[backend] = {
                    **measured,
                    "records": len(expected),
                    "stored": len(keys),
                    "stored_exactly_once": len(keys) == len(set(keys)) and set(keys) == expected,
                    "retries_answered_the_stored_record": len(set(ids)) == len(expected)
                    and len(ids) == len(expected) + args.writers * len(range(0, args.records, 10)),
                    "records_per_second": len(expected) / measured["seconds"],
                }
                store.close()
                print(f"{backend}: {json.dumps(rows[backend])}", flush=True)
    result = {
        "command": "python bench/corrections_load.py"
        + ("" if (args.writers, args.records) == (16, 500) else f" --writers {args.writers} --records {args.records}"),
        "writers": args.writers,
        "records_per_writer": args.records,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "backends": rows,
        "postgresql_rate_over_sqlite": rows["postgresql"]["records_per_second"] / rows["sqlite"]["records_per_second"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "corrections_load.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# The corrections store under load (bench/corrections_load.py)",
        "",
        f"`{result['command']}`: {args.writers} concurrent writers × {args.records} corrections over HTTP to "
        "`lucidlm serve`'s app (a tiny random BERT run), every tenth sent twice (a retry).",
        "",
        "| store | records | stored | exactly once | retries answered with the stored record | answers | seconds | records/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for backend, row in rows.items():
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(row["answers"].items()))
        lines.append(
            f"| {backend} | {row['records']} | {row['stored']} | {'yes' if row['stored_exactly_once'] else 'NO'} | "
            f"{'yes' if row['retries_answered_the_stored_record'] else 'NO'} | {answers} | {row['seconds']:.1f} | "
            f"{row['records_per_second']:.0f} |"
        )
    lines += [
        "",
        f"PostgreSQL's rate over SQLite's, same run: {result['postgresql_rate_over_sqlite']:.2f}×.",
        "",
        f"Machine: {result['machine']['platform']}, torch {result['machine']['torch']}, "
        f"{result['machine']['threads']} threads.",
        "",
    ]
    (RESULTS / "corrections_load.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
