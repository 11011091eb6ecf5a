"""``lucidlm serve`` under load: p50/p99 latency and throughput of predict and explain at 1, 4 and
16 concurrent clients, server errors, and resident memory after warm-up and after many requests.
Requests go only to 127.0.0.1; every phase is bounded in count and time.

    python bench/server_load.py [--run runs/bench-cebab-joint] [--requests 10000]

Writes bench/results/server_load.{json,md} (server_load_cuda.{json,md} with the model on a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

from lucidlm.web.serve import serving_device

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CLIENTS = (1, 4, 16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def texts_of(split: str = "test") -> list[str]:
    from lucidlm import load_task

    data = Path(os.environ.get("LUCIDLM_DATA", ROOT.parent / "shared" / "data")) / "cebab"
    return load_task("cebab", path=data).split(split).texts


def load(url: str, endpoint: str, texts: list[str], clients: int, count: int, seconds: float) -> dict:
    """``count`` requests (at most ``seconds``) from ``clients`` threads, each with its own connection."""
    latencies, statuses, next_index = [], [], iter(range(count))
    deadline = time.perf_counter() + seconds

    def client_loop(_):
        with httpx.Client(base_url=url, timeout=120) as client:
            for i in next_index:
                if time.perf_counter() > deadline:
                    return
                start = time.perf_counter()
                response = client.post(endpoint, json={"text": texts[i % len(texts)]})
                latencies.append(time.perf_counter() - start)
                statuses.append(response.status_code)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client_loop, range(clients)))
    elapsed = time.perf_counter() - start
    lat = np.array(latencies)
    return {
        "endpoint": endpoint,
        "clients": clients,
        "requests": len(lat),
        "seconds": elapsed,
        "throughput": len(lat) / elapsed,
        "p50_ms": float(np.percentile(lat, 50) * 1000),
        "p99_ms": float(np.percentile(lat, 99) * 1000),
        "server_errors": sum(s >= 500 for s in statuses),
        "other_errors": sum(400 <= s < 500 for s in statuses),
    }


def model_alone(run: Path, texts: list[str], device: str, seconds: float = 20.0) -> dict:
    """The server's model work without HTTP, in this process (the server idles): answers/s for
    one text at a time and for batches of 16, the most any server can give on this machine."""
    from lucidlm.models import load_pretrained
    from lucidlm.web.service import ModelService

    service = ModelService(load_pretrained(run).to(serving_device(device)))
    rates = {}
    try:
        for size in (1, 16):
            service._predictions(texts[:size])  # warm-up
            done, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / 2:
                service._predictions(texts[done % len(texts) : done % len(texts) + size])
                done += size
            rates[f"batch_{size}"] = done / (time.perf_counter() - start)
    finally:
        service.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "bench-cebab-joint")
    parser.add_argument("--requests", type=int, default=10_000, help="predictions for the memory measurement")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--device", default="auto", help="where the served model runs (lucidlm serve --device)")
    args = parser.parse_args()
    texts = texts_of()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # the server's messages go to a file, read if it dies: an unread pipe would block it once full
    server_log = tempfile.TemporaryFile(mode="w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "lucidlm.cli", "serve", str(args.run), "--port", str(port), "--device", args.device],
        stdout=subprocess.DEVNULL,
        stderr=server_log,
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"{url}/api/info", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("the server did not start")
        load(url, "/api/predict", texts[:1000], 4, args.warmup, 300)
        memory = {"after_warmup_mb": resident_mb(server.pid)}
        many = load(url, "/api/predict", texts[:1000], 16, args.requests, 600)
        memory.update(
            after_requests_mb=resident_mb(server.pid),
            requests=many["requests"],
            server_errors=many["server_errors"],
            throughput=many["throughput"],
        )
        memory["growth"] = memory["after_requests_mb"] / memory["after_warmup_mb"] - 1
        print(json.dumps({"memory": memory}), flush=True)
        rows = []
        for clients in CLIENTS:
            rows.append(load(url, "/api/predict", texts[:1000], clients, int(400 * clients**0.5), 120))
            print(json.dumps(rows[-1]), flush=True)
        unseen = 1000  # explain reads texts no phase sent before: the explanation cache does not answer them
        for clients in CLIENTS:
            rows.append(load(url, "/api/explain", texts[unseen : unseen + 3 * clients], clients, 3 * clients, 180))
            unseen += 3 * clients
            print(json.dumps(rows[-1]), flush=True)
        ceiling = model_alone(args.run, texts[:1000], args.device)
        print(json.dumps(ceiling), flush=True)
    except Exception:
        if server.poll() is not None:
            server_log.seek(0)
            print(
                f"the server stopped (exit status {server.returncode}):\n{server_log.read()[-4000:]}", file=sys.stderr
            )
        raise
    finally:
        server.terminate()
        server.wait(30)
        server_log.close()
    device = serving_device(args.device)
    result = {
        "command": "python bench/server_load.py" + (f" --device {args.device}" if args.device != "auto" else ""),
        "run": os.path.relpath(args.run, ROOT),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        },
        "phases": rows,
        "memory": memory,
        "model_alone": ceiling,
    }
    one, sixteen = (next(r for r in rows if r["endpoint"] == "/api/predict" and r["clients"] == c) for c in (1, 16))
    result["predict_throughput_16_over_1"] = sixteen["throughput"] / one["throughput"]
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "server_load" if device.type == "cpu" else f"server_load_{device.type}"  # one file per kind of machine
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    m = result["memory"]
    one, sixteen = (
        next(r["throughput"] for r in result["phases"] if r["endpoint"] == "/api/predict" and r["clients"] == c)
        for c in (1, 16)
    )
    machine = result["machine"]
    where = f"{machine['cpus']} CPUs" + (
        f", the model on {machine['device']}" if machine.get("device", "cpu") != "cpu" else ""
    )
    lines = [
        f"# `lucidlm serve` under load ({result['run']}, 127.0.0.1, {where})",
        "",
        f"Command: `{result['command']}`. Each client is a thread with its own connection, sending the next "
        "request when the last is answered; CEBaB test reviews as texts (explain: texts no other phase sent, "
        "so the explanation cache does not answer them).",
        "",
        "| endpoint | clients | requests | requests/s | p50 ms | p99 ms | 5xx | 4xx |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["phases"]:
        lines.append(
            f"| {r['endpoint']} | {r['clients']} | {r['requests']} | {r['throughput']:.1f} | {r['p50_ms']:.0f} | "
            f"{r['p99_ms']:.0f} | {r['server_errors']} | {r['other_errors']} |"
        )
    alone = result["model_alone"]
    lines += [
        "",
        f"Predict throughput, 16 clients over 1: {result['predict_throughput_16_over_1']:.2f}×.",
        "",
        f"The model's work alone (the answers of `/api/predict` without HTTP, in the bench's process while the "
        f"server idles): {alone['batch_1']:.1f} answers/s one text at a time, {alone['batch_16']:.1f} in batches of 16 "
        f"({alone['batch_16'] / alone['batch_1']:.2f}×). That is the ceiling of any server of this model on this "
        f"machine: 3× the one-client rate would be {3 * one:.0f}/s; at 16 clients the server gives "
        f"{sixteen / alone['batch_16']:.0%} of the ceiling while the clients' own work shares its {machine['cpus']} CPUs.",
        "",
        f"Resident memory of the server: {m['after_warmup_mb']:.0f} MB after the warm-up, "
        f"{m['after_requests_mb']:.0f} MB after {m['requests']} more predictions at 16 clients "
        f"({m['throughput']:.1f} requests/s, {m['server_errors']} 5xx): {m['growth']:+.1%}. (Measured before the phases above.)",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
