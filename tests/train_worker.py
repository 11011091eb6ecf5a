"""Trains a run as ``lucidlm train`` does, in a process of its own, for the tests that kill training
or start several processes (``torchrun --nproc_per_node 2 tests/train_worker.py ...``).

    python tests/train_worker.py CONFIG OUTPUT_DIR [--resume] [--kill-at-step N] [--weights-dir DIR] [--record-draws]
    python tests/train_worker.py --calibration OUTPUT_DIR

``--kill-at-step N``: the process sends itself SIGKILL as its N-th optimizer step begins, a real
kill mid-run. ``--weights-dir``: every process saves its model's tensors and the metrics there
(``rank<r>.safetensors``, ``rank<r>.json``), so that a test can compare the processes.
``--record-draws``: every process also saves there what it drew while training
(``rank<r>-draws.safetensors``): each step's RandInt choices, the first step's first dropout mask,
and the gradient norm of each step before clipping. ``--calibration``: no training; each process
calibrates a scalar concept layer on its share of fixed global batches, as training does, and
saves the layer's forced-logits table (``rank<r>-calibration.safetensors``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers
from safetensors.torch import save_file

from lucidlm.experiment import read_experiment, run_experiment
from lucidlm.progress import show_progress_lines
from lucidlm.training import process_state


def kill_at_step(n: int) -> None:
    step = torch.optim.AdamW.step
    calls = 0

    def counting_step(self, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return step(self, *args, **kwargs)

    torch.optim.AdamW.step = counting_step


def record_draws() -> dict[str, list]:
    """What this process draws while training, recorded without changing a single draw: the kept
    mask of each training step's RandInt (``random_interventions`` without a generator; the
    draw is made once more on every concept, with the generator's state put back), the first
    dropout mask of the first step (elements zeroed), and the gradient norm that each step clips."""
    from accelerate import Accelerator

    from lucidlm.data import MISSING
    from lucidlm.models import bottleneck

    draws = {"randint": [], "dropout": [], "gradient_norms": []}
    interventions = bottleneck.random_interventions

    def recording_interventions(gold, rate, generator=None):
        if generator is None:  # a training step's draw (the stages after training pass a seeded generator)
            state = torch.get_rng_state()
            draws["randint"].append(interventions(torch.zeros_like(gold), rate) != MISSING)
            torch.set_rng_state(state)
        return interventions(gold, rate, generator)

    bottleneck.random_interventions = recording_interventions
    dropout = torch.nn.functional.dropout

    def recording_dropout(input, p=0.5, training=True, inplace=False):
        out = dropout(input, p, training, inplace)
        if training and p > 0 and not draws["dropout"]:
            draws["dropout"].append(out == 0)
        return out

    torch.nn.functional.dropout = recording_dropout
    clip = Accelerator.clip_grad_norm_

    def recording_clip(self, parameters, max_norm, norm_type=2):
        norm = clip(self, parameters, max_norm, norm_type)
        draws["gradient_norms"].append(float(norm))
        return norm

    Accelerator.clip_grad_norm_ = recording_clip
    return draws


def save_draws(draws: dict[str, list], path: Path) -> None:
    tensors = {"gradient_norms": torch.tensor(draws["gradient_norms"], dtype=torch.float64)}
    if draws["randint"]:
        tensors["randint"] = torch.stack(draws["randint"])  # [steps, rows of this process, concepts]
    if draws["dropout"]:
        tensors["dropout"] = draws["dropout"][0].contiguous()
    save_file(tensors, str(path))


def calibrate_shares(output_dir: Path) -> None:
    """A scalar concept layer calibrated (momentum 0.9, as each training step does) on five fixed
    global batches of 16 rows, each process on its share of the rows; its table saved."""
    from lucidlm.data import MISSING, ConceptSpec, TaskSpec
    from lucidlm.models.concept_layers import ScalarConceptLayer

    state = process_state()
    concepts = (ConceptSpec("food", ("bad", "fine", "good")), ConceptSpec("noise", ("quiet", "loud")))
    spec = TaskSpec(classes=("no", "yes"), concepts=concepts)
    layer = ScalarConceptLayer(spec, 8, SimpleNamespace(concept_activation="logits"))
    generator = torch.Generator().manual_seed(0)  # the same global batches on every process
    rank, processes, rows = state.process_index, state.num_processes, 16
    share = slice(rank * rows // processes, (rank + 1) * rows // processes)  # as the global batch is split
    for _ in range(5):
        logits = [3 * torch.randn(rows, len(c.values), generator=generator) for c in spec.concepts]
        # gold: the predicted value on 3 rows in 4 (recognised), a random value or MISSING elsewhere
        gold = torch.stack(
            [
                torch.where(
                    torch.rand(rows, generator=generator) < 0.75,
                    x.argmax(-1),
                    torch.randint(-1, x.shape[1], (rows,), generator=generator),
                )
                for x in logits
            ],
            1,
        )
        gold[gold == -1] = MISSING
        layer.calibrate([x[share] for x in logits], gold[share], momentum=0.9)
    output_dir.mkdir(parents=True, exist_ok=True)
    save_file({"table": layer.intervention_table.contiguous()}, str(output_dir / f"rank{rank}-calibration.safetensors"))
    # leave the process group together: a process that exits with gloo's threads still running can abort
    # ("terminate called without an active exception"), which a loaded machine made happen
    state.wait_for_everyone()
    state.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path, nargs="?")
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--weights-dir", type=Path)
    parser.add_argument("--record-draws", action="store_true")
    parser.add_argument("--calibration", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.calibration:
        calibrate_shares(args.output_dir)
        return
    transformers.utils.logging.set_verbosity_error()
    show_progress_lines()  # as ``lucidlm train`` does
    if args.kill_at_step:
        kill_at_step(args.kill_at_step)
    draws = record_draws() if args.record_draws else None
    model, metrics = run_experiment(read_experiment(args.config, args.output_dir), resume=args.resume)
    if args.weights_dir:
        rank = process_state().process_index
        args.weights_dir.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in model.checkpoint_tensors().items()},
            str(args.weights_dir / f"rank{rank}.safetensors"),
        )
        (args.weights_dir / f"rank{rank}.json").write_text(
            json.dumps({"metrics": metrics, "history": model.training_history})
        )
        if draws is not None:
            save_draws(draws, args.weights_dir / f"rank{rank}-draws.safetensors")


if __name__ == "__main__":
    main()
