"""Memory and speed of every family on a decoder backbone (issue 33): a Llama-architecture config
with random weights at a chosen size, bf16 weights, a LoRA adapter, gradient checkpointing; a few
training steps of each family through its own ``fit``, beside the baseline a user would pick
instead: PEFT's own sequence classification (``AutoModelForSequenceClassification`` with the same
LoRA settings), trained for the same steps on the same batches. Each row runs in a process of its
own, so that its peak memory is its own (CUDA: max allocated; CPU: the process's peak resident
memory, less what the same process held before building the model).

    python bench/llm_scale.py [--sizes 1b] [--batch 2] [--tokens 64] [--steps 4] [--device cpu]

Prints the table and writes bench/results/llm_scale.{json,md}; ``--sizes`` with three or more
sizes also fits the memory model (bytes per backbone parameter and per token, per family).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# Llama-architecture shapes (grouped-query attention, 8 key/value heads); vocabulary 32,000.
SIZES = {
    "50m": dict(
        hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, intermediate_size=1536
    ),
    "200m": dict(
        hidden_size=1024, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=8, intermediate_size=3072
    ),
    "500m": dict(
        hidden_size=1536, num_hidden_layers=14, num_attention_heads=16, num_key_value_heads=8, intermediate_size=5120
    ),
    "1b": dict(
        hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, intermediate_size=8192
    ),
    "8b": dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336
    ),
}
VOCAB = 32000
FAMILIES = {
    "standard": {},
    "bottleneck": {"mode": "joint"},
    "prototype": {"prototypes_per_class": 4},
    # pruned once, at the end of the few steps; movement scores (oBERT's buffer is refused at this size)
    "sparse": {
        "sparsity": 0.5,
        "pruning_start": 0.0,
        "pruning_end": 1.0,
        "pruning_interval": 1000,
        "pruning_score": "movement",
    },
}
BASELINE = "peft-sequence-classification"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"}


def save_backbone(folder: Path, size: str) -> Path:
    """Random weights of a Llama config of ``size``, stored in bf16, and a tokenizer whose ids all
    fall in the vocabulary (the tests' byte-level BPE)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_decoders import tiny_tokenizer

    config = transformers.LlamaConfig(
        vocab_size=VOCAB, max_position_embeddings=4096, **SIZES[size], bos_token_id=0, eos_token_id=1
    )
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = transformers.AutoModel.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tiny_tokenizer({"bos": "<|begin_of_text|>", "eos": "<|end_of_text|>"}, True, "right").save_pretrained(folder)
    return folder


def measure(folder: Path, family: str, batch: int, tokens: int, steps: int, device: str) -> dict:
    """One row, in this process: build, train ``steps`` steps, report peak memory and tokens/s."""
    from lucidlm import load_task

    torch.manual_seed(0)
    held_before = peak_bytes(device)
    task = load_task("cebab", path=ROOT.parent / "shared" / "data" / "cebab")
    words = " ".join(task.train.texts[:50]).split()
    by_class = [np.flatnonzero(task.train.labels == c) for c in range(len(task.spec.classes))]
    interleaved = [
        int(i) for group in zip(*by_class) for i in group
    ]  # every class in the first rows (prototypes start there)
    rows = task.train.select(interleaved[: max(batch * steps, len(by_class))])
    rows.texts = [" ".join(words[(i * 7) % 100 :][: tokens * 2]) for i in range(len(rows))]  # every text > tokens
    if family == BASELINE:
        seconds = peft_baseline(folder, rows, batch, tokens, steps, device)
    else:
        from lucidlm.models import FAMILIES as REGISTERED

        options = {**FAMILIES[family], "dtype": "bfloat16", "max_length": tokens}
        if family != "sparse":
            options["adapter"] = LORA
        try:
            model = REGISTERED.get(family).from_backbone(str(folder), task=task.spec, **options)
        except Exception as e:  # noqa: BLE001 (a family that refuses the setting is a row that says why)
            return {"family": family, "refused": str(e)}
        model.to(device)
        start = time.perf_counter()  # the whole fit (its set-up too) over its steps, as the baseline's loop
        model.fit(
            rows,
            None,
            epochs=1,
            batch_size=batch,
            progress=False,
            calibrate=False,
            gradient_checkpointing=True,
            learning_rate=1e-4,
        )
        seconds = (time.perf_counter() - start) / (len(rows) // batch)
    return {
        "family": family,
        "peak_bytes": peak_bytes(device) - held_before,
        "seconds_per_step": seconds,
        "tokens_per_second": batch * tokens / seconds,
    }


def peft_baseline(folder: Path, rows, batch: int, tokens: int, steps: int, device: str) -> float:
    from peft import LoraConfig, TaskType, get_peft_model

    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, num_labels=5, dtype=torch.bfloat16)
    model.config.pad_token_id, model.config.use_cache = tokenizer.pad_token_id, False
    model = get_peft_model(
        model,
        LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            target_modules=LORA["target_modules"],
        ),
    )
    model.to(device).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    steps = len(rows) // batch
    start = time.perf_counter()
    for s in range(steps):
        texts = rows.texts[s * batch : (s + 1) * batch]
        encoded = tokenizer(texts, truncation=True, max_length=tokens, padding=True, return_tensors="pt").to(device)
        labels = torch.as_tensor(rows.labels[s * batch : (s + 1) * batch], device=device)
        loss = model(**encoded, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / steps


def peak_bytes(device: str) -> int:
    if device == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def parameters_of(size: str) -> int:
    config = transformers.LlamaConfig(vocab_size=VOCAB, **SIZES[size])
    with torch.device("meta"):
        return sum(p.numel() for p in transformers.AutoModel.from_config(config).parameters())


def memory_model(rows: list[dict]) -> dict:
    """Per family, least squares of peak bytes on (backbone parameters, tokens per batch) over the
    sizes measured: bytes per parameter and per token, and each size's prediction beside its peak."""
    model = {}
    for family in sorted({r["family"] for r in rows if "peak_bytes" in r}):
        mine = [r for r in rows if r["family"] == family and "peak_bytes" in r]
        if len({r["parameters"] for r in mine}) < 3:
            continue
        x = np.array([[r["parameters"], r["batch"] * r["tokens"], 1.0] for r in mine])
        y = np.array([r["peak_bytes"] for r in mine], dtype=float)
        (per_parameter, per_token, fixed), *_ = np.linalg.lstsq(x, y, rcond=None)
        model[family] = {
            "bytes_per_parameter": per_parameter,
            "bytes_per_token": per_token,
            "fixed_bytes": fixed,
            "checked": [
                {
                    "size": r["size"],
                    "peak_bytes": r["peak_bytes"],
                    "predicted": float(x[i] @ [per_parameter, per_token, fixed]),
                }
                for i, r in enumerate(mine)
            ],
        }
    return model


def markdown(result: dict) -> str:
    lines = [
        "# Memory and speed on a Llama-architecture backbone (random weights, bf16, LoRA r = 16 on every linear "
        "layer, gradient checkpointing)",
        "",
        f"Device: {result['device']}. Batch {result['batch']} × {result['tokens']} tokens, {result['steps']} training "
        "steps per row, each row in its own process. Peak: CUDA max allocated, or on CPU the process's peak resident "
        f"memory less what it held before building the model (on CPU the bf16 weights are read from the memory-mapped "
        "checkpoint, whose pages the resident figure undercounts: compare rows with one another, not with 2 bytes per "
        f"parameter). Baseline: {BASELINE} (PEFT's own, the same LoRA "
        "settings, the same batches). Ratios against the baseline of the same size, measured in the same run; a "
        "family's seconds include its fit's set-up (Accelerate, the data loader) over its few steps.",
        "",
        "| size | backbone parameters | family | peak | × baseline | tokens/s | × baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        base = next(b for b in result["rows"] if b["size"] == r["size"] and b["family"] == BASELINE)
        if "refused" in r or "failed" in r:
            why = f"refused: {r['refused']}" if "refused" in r else f"failed: {r['failed']}"
            lines.append(f"| {r['size']} | {r['parameters']:,} | {r['family']} | {why[:160]} | | | |")
            continue
        lines.append(
            f"| {r['size']} | {r['parameters']:,} | {r['family']} | {r['peak_bytes'] / 2**30:.2f} GiB | "
            f"{r['peak_bytes'] / base['peak_bytes']:.2f} | {r['tokens_per_second']:.1f} | "
            f"{r['tokens_per_second'] / base['tokens_per_second']:.2f} |"
        )
    if result["memory_model"]:
        lines += [
            "",
            "Memory model, fitted over the sizes (peak ≈ fixed + a · parameters + b · tokens per batch):",
            "",
            "| family | bytes per parameter | bytes per token | fixed | measured → predicted |",
            "|---|---|---|---|---|",
        ]
        for family, m in result["memory_model"].items():
            checked = ", ".join(
                f"{c['size']} {c['peak_bytes'] / 2**30:.2f} → {c['predicted'] / 2**30:.2f} GiB" for c in m["checked"]
            )
            lines.append(
                f"| {family} | {m['bytes_per_parameter']:.2f} | {m['bytes_per_token'] / 2**20:.2f} MiB | "
                f"{m['fixed_bytes'] / 2**20:.0f} MiB | {checked} |"
            )
    lines += ["", f"Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1b"], choices=SIZES)
    parser.add_argument("--families", nargs="+", default=[*FAMILIES, BASELINE], choices=[*FAMILIES, BASELINE])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--row", nargs=2, metavar=("FOLDER", "FAMILY"), help=argparse.SUPPRESS
    )  # one row, in a child process
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if args.row:
        print(json.dumps(measure(Path(args.row[0]), args.row[1], args.batch, args.tokens, args.steps, args.device)))
        return
    rows = []
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as folder:
            save_backbone(Path(folder), size)
            for family in args.families:
                child = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--row",
                        folder,
                        family,
                        "--batch",
                        str(args.batch),
                        "--tokens",
                        str(args.tokens),
                        "--steps",
                        str(args.steps),
                        "--device",
                        args.device,
                    ],
                    capture_output=True,
                    text=True,
                )
                if child.returncode:  # e.g. killed for memory: the row says so, the others stand
                    last = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
                    measured = {"family": family, "failed": f"exit status {child.returncode}: {last[:200]}"}
                else:
                    measured = json.loads(child.stdout.strip().splitlines()[-1])
                row = {
                    **measured,
                    "size": size,
                    "parameters": parameters_of(size),
                    "batch": args.batch,
                    "tokens": args.tokens,
                }
                print(row, flush=True)
                rows.append(row)
    result = {
        "command": "python bench/llm_scale.py " + " ".join(sys.argv[1:]),
        "device": args.device,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "batch": args.batch,
        "tokens": args.tokens,
        "steps": args.steps,
        "rows": rows,
        "memory_model": memory_model(rows),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "llm_scale" if args.device == "cpu" else "llm_scale_cuda"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
