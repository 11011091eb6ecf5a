"""SparseCBM speed at K=4 on the default backbone: all subnetworks in one batched pass vs the
K subnetworks run one after another with float masks (the published code's way). Same batch,
same padding, same process, the two alternated; peak memory of each in its own subprocess.

    python bench/sparse_throughput.py [--batch 16] [--repeats 5] [--density 0.3]

Writes bench/results/sparse_throughput.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
MODES = ("batched", "one_by_one")


def build(batch_size: int, density: float):
    from lucidlm import SparseConceptLM, load_task

    task = load_task("cebab", path=ROOT.parent / "shared" / "data" / "cebab")
    model = SparseConceptLM.from_backbone(task=task.spec, seed=0)
    generator = torch.Generator().manual_seed(0)
    for layer in model.subnetworks.values():
        layer.mask.copy_(torch.rand(layer.mask.shape, generator=generator) < density)
    batch = next(iter(model.encoder.loader(task.test.sample(batch_size, seed=0), batch_size)))
    return model, batch


def step(model, batch, mode: str, train: bool) -> None:
    """One inference pass, or one training step's forward + backward, over all K concepts."""
    concept_logits = model.concept_logits if mode == "batched" else model.concept_logits_one_by_one
    model.train(train)
    with torch.set_grad_enabled(train):
        logits, _ = concept_logits(batch["input_ids"], batch["attention_mask"])
        if train:
            label_logits = model.label_from_concepts(model.concept_activations(logits))
            loss = torch.nn.functional.cross_entropy(label_logits, batch["labels"])
            loss = loss + sum(torch.nn.functional.cross_entropy(x, batch["concepts"][:, k]) for k, x in enumerate(logits))
            loss.backward()
            model.zero_grad(set_to_none=True)


def peak_memory(mode: str, train: bool, batch_size: int, density: float) -> float:
    """Peak MiB above the loaded model's resident size during one step of ``mode``, in a fresh
    process (Linux: writing 5 to /proc/self/clear_refs resets the peak, VmHWM, after loading)."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import sparse_throughput as b; "
            f"m, x = b.build({batch_size}, {density}); b.step(m, x, {mode!r}, {train}); "
            "kib = lambda k: int(next(l for l in open('/proc/self/status') if l.startswith(k)).split()[1]); "
            "base = kib('VmRSS:'); open('/proc/self/clear_refs', 'w').write('5'); "
            f"b.step(m, x, {mode!r}, {train}); print((kib('VmHWM:') - base) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--density", type=float, default=0.3)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model, batch = build(args.batch, args.density)
    times = {(mode, train): [] for mode in MODES for train in (False, True)}
    for train in (False, True):
        for mode in MODES:  # warm-up
            step(model, batch, mode, train)
        for _ in range(args.repeats):
            for mode in MODES:  # alternate, so drift in machine load hits both
                start = time.perf_counter()
                step(model, batch, mode, train)
                times[(mode, train)].append(time.perf_counter() - start)
    rows = {}
    for (mode, train), samples in times.items():
        key = f"{'training' if train else 'inference'}/{mode}"
        rows[key] = {"examples_per_second": args.batch / statistics.median(samples), "seconds": samples,
                     "peak_memory_mib": peak_memory(mode, train, args.batch, args.density)}
    for phase in ("inference", "training"):
        rows[f"{phase}/speedup"] = rows[f"{phase}/batched"]["examples_per_second"] / rows[f"{phase}/one_by_one"]["examples_per_second"]
    result = {
        "command": f"python bench/sparse_throughput.py --batch {args.batch} --repeats {args.repeats} --density {args.density}",
        "machine": {"cores": psutil.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "tokens_per_row": int(batch["input_ids"].shape[1]), "concepts": 4, "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sparse_throughput.json").write_text(json.dumps(result, indent=2))
    lines = ["# SparseCBM throughput at K=4 (all-MiniLM-L6-v2, weight-level masks)", "",
             f"Command: `{result['command']}`; batch of {args.batch} CEBaB test rows padded to "
             f"{result['tokens_per_row']} tokens; median of {args.repeats}.", "",
             "| phase | batched ex/s | one-by-one ex/s | batched / one-by-one | peak MiB batched | peak MiB one-by-one |",
             "|---|---|---|---|---|---|"]
    for phase in ("inference", "training"):
        b, o = rows[f"{phase}/batched"], rows[f"{phase}/one_by_one"]
        lines.append(f"| {phase} | {b['examples_per_second']:.1f} | {o['examples_per_second']:.1f} | "
                     f"{rows[f'{phase}/speedup']:.2f}× | {b['peak_memory_mib']:.0f} | {o['peak_memory_mib']:.0f} |")
    (RESULTS / "sparse_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
