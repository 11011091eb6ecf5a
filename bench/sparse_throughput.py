"""SparseCBM speed at K=4 on the default backbone: all subnetworks in one batched pass, with
weight-level and with neuron-level masks, vs the K subnetworks run one after another with float
masks (the published code's way), and one dense pass (a joint bottleneck model) for scale. Same
batch, same padding, same process, the modes alternated; peak memory of each in its own subprocess.

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
MODES = {  # mode: (mask granularity, how the K concepts run)
    "one_by_one": ("weight", "one_by_one"),
    "batched": ("weight", "batched"),
    "batched_neuron": ("neuron", "batched"),
    "dense": ("weight", "dense"),
}


def build(batch_size: int, density: float, granularity: str = "weight"):
    """The default model with random masks at ``density``: weights, or whole heads and neurons
    (each block's counts from ``units_to_keep``, a random choice per concept)."""
    from lucidlm import SparseConceptLM, load_task
    from lucidlm.masking import units_to_keep

    task = load_task("cebab", path=ROOT.parent / "shared" / "data" / "cebab")
    model = SparseConceptLM.from_backbone(task=task.spec, seed=0, granularity=granularity)
    generator = torch.Generator().manual_seed(0)
    if granularity == "weight":
        for layer in model.subnetworks.values():
            layer.mask.copy_(torch.rand(layer.mask.shape, generator=generator) < density)
    for group, keep in zip(model.unit_groups, units_to_keep(model.unit_groups, 1 - density)):
        for k in range(model.num_concepts):
            chosen = torch.zeros(group.num_units, dtype=torch.bool)
            chosen[torch.randperm(group.num_units, generator=generator)[:keep]] = True
            group.set_units(k, chosen)
    batch = next(iter(model.encoder.loader(task.test.sample(batch_size, seed=0), batch_size)))
    return model, batch


def dense_concept_states(model, input_ids, attention_mask):
    """Every concept head on one dense pass: the cost of a joint bottleneck model."""
    pooled = model.subnetwork_pooled(input_ids, attention_mask, None)
    return model.concept_layer.states([pooled] * model.num_concepts), pooled


def step(model, batch, mode: str, train: bool) -> None:
    """One inference pass, or one training step's forward + backward, over all K concepts."""
    how = MODES[mode][1]
    concept_states = {
        "batched": model.concept_states,
        "one_by_one": model.concept_states_one_by_one,
        "dense": lambda *a: dense_concept_states(model, *a),
    }[how]
    model.train(train)
    with torch.set_grad_enabled(train):
        states, _ = concept_states(batch["input_ids"], batch["attention_mask"])
        if train:
            logits = model.concept_logits_of(states)
            label_logits = model.label_from_concepts(model.concept_activations(states))
            loss = torch.nn.functional.cross_entropy(label_logits, batch["labels"])
            loss = loss + sum(
                torch.nn.functional.cross_entropy(x, batch["concepts"][:, k]) for k, x in enumerate(logits)
            )
            loss.backward()
            model.zero_grad(set_to_none=True)


def peak_memory(mode: str, train: bool, batch_size: int, density: float) -> float:
    """Peak MiB above the loaded model's resident size during one step of ``mode``, in a fresh
    process (Linux: writing 5 to /proc/self/clear_refs resets the peak, VmHWM, after loading)."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); import sparse_throughput as b; "
        f"m, x = b.build({batch_size}, {density}, {MODES[mode][0]!r}); b.step(m, x, {mode!r}, {train}); "
        "kib = lambda k: int(next(l for l in open('/proc/self/status') if l.startswith(k)).split()[1]); "
        "base = kib('VmRSS:'); open('/proc/self/clear_refs', 'w').write('5'); "
        f"b.step(m, x, {mode!r}, {train}); print((kib('VmHWM:') - base) / 1024)"
    )
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
    models = {g: build(args.batch, args.density, g) for g in ("weight", "neuron")}
    batch = models["weight"][1]
    times = {(mode, train): [] for mode in MODES for train in (False, True)}
    for train in (False, True):
        for mode in MODES:  # warm-up
            step(models[MODES[mode][0]][0], batch, mode, train)
        for _ in range(args.repeats):
            for mode in MODES:  # alternate, so drift in machine load hits every mode
                model = models[MODES[mode][0]][0]
                start = time.perf_counter()
                step(model, batch, mode, train)
                times[(mode, train)].append(time.perf_counter() - start)
    rows = {}
    for (mode, train), samples in times.items():
        key = f"{'training' if train else 'inference'}/{mode}"
        rows[key] = {
            "examples_per_second": args.batch / statistics.median(samples),
            "seconds": samples,
            "peak_memory_mib": peak_memory(mode, train, args.batch, args.density),
        }
    for phase in ("inference", "training"):  # each mode against the published code's way
        baseline = rows[f"{phase}/one_by_one"]["examples_per_second"]
        for mode in MODES:
            rows[f"{phase}/{mode}"]["speedup"] = rows[f"{phase}/{mode}"]["examples_per_second"] / baseline
    result = {
        "command": f"python bench/sparse_throughput.py --batch {args.batch} --repeats {args.repeats} --density {args.density}",
        "machine": {"cores": psutil.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "tokens_per_row": int(batch["input_ids"].shape[1]),
        "concepts": 4,
        "results": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sparse_throughput.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# SparseCBM throughput at K=4 (all-MiniLM-L6-v2)",
        "",
        f"Command: `{result['command']}`; batch of {args.batch} CEBaB test rows padded to "
        f"{result['tokens_per_row']} tokens; median of {args.repeats}; masks keep {args.density:.0%} of the "
        "weights (neuron-level: whole heads and neurons, each block at that density).",
        "",
        "| phase | mode | ex/s | × one-by-one | peak MiB |",
        "|---|---|---|---|---|",
    ]
    for phase in ("inference", "training"):
        for mode in MODES:
            row = rows[f"{phase}/{mode}"]
            lines.append(
                f"| {phase} | {mode} | {row['examples_per_second']:.1f} | {row['speedup']:.2f}× | {row['peak_memory_mib']:.0f} |"
            )
    lines += [
        "",
        "one_by_one: the K subnetworks one after another with float masks (the published code's way); "
        "batched: one pass, weight-level masks; batched_neuron: one pass, each subnetwork gathered to its "
        "kept heads and neurons; dense: one dense pass shared by all concepts (a joint bottleneck model), for scale.",
    ]
    (RESULTS / "sparse_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
