"""Trains a run as ``lucidlm train`` does, in a process of its own, for the tests that kill training
or start several processes (``torchrun --nproc_per_node 2 tests/train_worker.py ...``).

    python tests/train_worker.py CONFIG OUTPUT_DIR [--resume] [--kill-at-step N] [--weights-dir DIR]

``--kill-at-step N``: the process sends itself SIGKILL as its N-th optimizer step begins, a real
kill mid-run. ``--weights-dir``: every process saves its model's tensors and the metrics there
(``rank<r>.safetensors``, ``rank<r>.json``), so that a test can compare the processes.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file

from lucidlm.experiment import read_experiment, run_experiment
from lucidlm.training import process_state, show_progress_lines


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill-at-step", type=int)
    parser.add_argument("--weights-dir", type=Path)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    torch.set_num_threads(1)
    show_progress_lines()  # as ``lucidlm train`` does
    if args.kill_at_step:
        kill_at_step(args.kill_at_step)
    model, metrics = run_experiment(read_experiment(args.config, args.output_dir), resume=args.resume)
    if args.weights_dir:
        rank = process_state().process_index
        args.weights_dir.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in model.checkpoint_tensors().items()}, str(args.weights_dir / f"rank{rank}.safetensors"))
        (args.weights_dir / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "history": model.training_history}))


if __name__ == "__main__":
    main()
