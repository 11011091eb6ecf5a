"""The training loop, on Hugging Face Accelerate: CPU, one GPU, or several processes (DDP) started
by ``accelerate launch`` or ``torchrun``.

Model selection reads the dev split only, after every epoch; the best state is restored at the
end; training stops early after ``patience`` epochs without improvement. ``batch_size`` is the
global batch: with N processes each takes 1/N of every batch (Accelerate's ``split_batches``), so
the same config takes the same steps on any number of processes. Given a run folder, the loop
checkpoints its whole state there (``checkpoints``) at every epoch end and every
``checkpoint_steps``, and a resumed run ends with the weights an uninterrupted one would have.
Only the main process writes files and reports progress.

Random numbers: what must agree across processes is drawn before the loop from the shared seed
(a model's initialisation, ``before_training``'s draws) or from generators of its own (the data
order: every process shuffles alike, then takes its share of each global batch). The draws of the
training steps (dropout, RandInt, mixup, IntCEM) come from each process's own seed,
``process_seed(seed, process)``, ``seed`` itself for process 0: one process trains exactly as it
did before there was a per-process seed. A draw that decides what the whole step computes (which
counterfactual pairs) is made by process 0 and shared (``same_on_every_process``). A checkpoint
keeps every process's generators; after the loop every process continues process 0's.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.state import AcceleratorState
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from .checkpoints import (
    check_same_settings,
    load_checkpoint,
    load_optimizer_state,
    optimizer_state,
    prefixed,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .errors import LucidError
from .layout import CHECKPOINT_DIR, TRAINING_LOG
from .progress import progress_log

log = logging.getLogger(__name__)
# Progress lines for logs (not a terminal) go to ``progress.progress_log``, shown by whoever
# configures it (the CLI writes it to stderr: ``show_progress_lines``).


MIXED_PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class TrainingConfig:
    epochs: int = 5
    batch_size: int = 16  # global: split over the processes
    eval_batch_size: int = 64
    learning_rate: float = 5e-5  # the pretrained backbone
    head_learning_rate: float = 1e-2  # the freshly initialised heads (the label head reads probabilities in [0, 1])
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    patience: int = 2  # epochs without a better dev score before stopping
    seed: int = 0
    progress: bool = True  # a bar on a terminal; otherwise a line every ``log_steps`` and at each epoch end
    log_steps: int = 50
    checkpoint_steps: int = 0  # also checkpoint every N optimizer steps (0: at epoch ends only)
    trackers: list[str] = field(default_factory=list)  # Accelerate trackers, e.g. ["tensorboard"] or ["wandb"]
    calibrate: bool = True  # after training, fit temperatures on dev (``calibration``; the loop is unchanged)
    # Autocast of the training steps through Accelerate: no | bf16 | fp16 (fp16: CUDA, with loss
    # scaling). Evaluation runs in the backbone's dtype, and every head and metric in float32.
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False  # recompute the backbone's activations in the backward pass (memory for time)

    # Settings that change nothing the loop learns: a checkpoint resumes under other values of these.
    reporting_fields = ("progress", "log_steps", "checkpoint_steps", "trackers", "calibrate", "gradient_checkpointing")

    def __post_init__(self):
        for name in ("epochs", "batch_size", "eval_batch_size", "log_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise LucidError(f"training.{name}: expected an integer >= 1, found {getattr(self, name)!r}")
        if not isinstance(self.checkpoint_steps, int) or self.checkpoint_steps < 0:
            raise LucidError(f"training.checkpoint_steps: expected an integer >= 0, found {self.checkpoint_steps!r}")
        if isinstance(self.trackers, str):
            self.trackers = [self.trackers]
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise LucidError(
                f"training.mixed_precision: expected one of {list(MIXED_PRECISIONS)}, found {self.mixed_precision!r}"
            )
        if self.mixed_precision == "fp16" and uses_cpu_only():
            raise LucidError(
                "training.mixed_precision: fp16 needs a CUDA GPU and this machine has none; use bf16 on CPU"
            )

    def learning_settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in self.reporting_fields}


def process_state() -> PartialState:
    """The processes that train together (one unless started by ``accelerate launch`` or
    ``torchrun``): CPU processes over gloo where there is no GPU or ``ACCELERATE_USE_CPU`` is set."""
    return PartialState(cpu=uses_cpu_only())


def training_accelerator(config: TrainingConfig, run_dir: Path | None) -> Accelerator:
    """Accelerate for one training loop: global batches split over the processes; the trackers
    asked for, each of which must be installed (Accelerate would silently drop it)."""
    process_state()
    state = AcceleratorState._shared_state
    if state and str(state.get("_mixed_precision", "no")) != config.mixed_precision:
        # Accelerate keeps one precision per process; each training loop has its own (the
        # processes' state, PartialState, stays as it is).
        AcceleratorState._reset_state(reset_partial_state=False)
    try:
        accelerator = Accelerator(
            cpu=uses_cpu_only(),
            dataloader_config=DataLoaderConfiguration(split_batches=True),
            log_with=config.trackers or None,
            project_dir=run_dir,
            mixed_precision=config.mixed_precision,
        )
    except ValueError as e:  # an unknown tracker
        raise LucidError(f"training.trackers: {e}") from None
    kept = {str(getattr(t, "value", t)) for t in accelerator.log_with}
    missing = [t for t in config.trackers if t != "all" and t not in kept]
    if missing:
        raise LucidError(f"training.trackers: {missing[0]!r} is not installed here (pip install {missing[0]})")
    return accelerator


def uses_cpu_only() -> bool:
    return os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or not torch.cuda.is_available()


def set_seed(seed: int) -> None:
    """Python, NumPy and torch generators: the same seed on the same machine gives the same run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def process_seed(seed: int, process: int, step: int = 0) -> int:
    """The seed of process ``process``'s draws in the training steps. Process 0 from the start:
    ``seed`` itself (one process draws what it always drew). Otherwise the first 32-bit word of
    NumPy's ``SeedSequence((seed, process, step))``: a hash, so the processes' streams are
    unrelated to one another and to other seeds' (an offset such as ``seed + process`` would make
    process 1 of seed 0 draw what process 0 of seed 1 draws). ``step`` > 0: a process resuming a
    checkpoint that holds no generators of its own (one written by fewer processes)."""
    if process == 0 and step == 0:
        return seed
    return int(np.random.SeedSequence((seed, process, step)).generate_state(1)[0])


class TrainingHooks:
    """What a family may do around each optimizer step (SparseCBM's pruner does all of it).
    ``step`` counts optimizer steps from 0 over the whole run."""

    def before_step(self, step: int) -> None:
        pass

    def after_backward(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> None:
        pass

    def selectable(self, epoch: int) -> bool:
        """Whether the model after this epoch may be chosen as the best one."""
        return True

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """What a checkpoint must keep of the hooks (tensors, JSON), for ``load_state``."""
        return {}, {}

    def load_state(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        pass


def processes_together() -> int:
    """How many processes train together (1 outside ``accelerate launch`` / ``torchrun``)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over the processes that train together (itself with one)."""
    if processes_together() > 1:
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
        tensor /= torch.distributed.get_world_size()
    return tensor


def sum_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the processes that train together (itself with one); every
    process must call it, at the same point."""
    if processes_together() > 1:
        tensor = _on_backend_device(tensor.clone())
        torch.distributed.all_reduce(tensor)
    return tensor


def same_on_every_process(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` as process 0 holds it, on every process (itself with one): for a draw that
    decides what the whole step computes, made alike wherever it is used. Every process must call
    it, at the same point, with a tensor of the same shape and type."""
    if processes_together() > 1:
        shared = _on_backend_device(tensor.clone())
        torch.distributed.broadcast(shared, src=0)
        tensor = shared.to(tensor.device)
    return tensor


def _on_backend_device(tensor: torch.Tensor) -> torch.Tensor:
    """NCCL moves GPU tensors only."""
    if torch.distributed.get_backend() == "nccl" and tensor.device.type != "cuda":
        return tensor.to(torch.device("cuda", torch.cuda.current_device()))
    return tensor


# Settings that a caller above ``fit`` adds to those a checkpoint must have been written under.
_CALLER_SETTINGS: ContextVar[dict] = ContextVar("lucidlm_checkpoint_settings", default={})  # noqa: B039


@contextmanager
def checkpoint_settings(settings: dict):
    """While the block runs, ``fit_loop`` also records ``settings`` in its checkpoints and resumes
    only under the same (merged into its own; ``run_experiment`` adds the fingerprint of the test
    split it reports, which training never reads)."""
    token = _CALLER_SETTINGS.set(_merged(_CALLER_SETTINGS.get(), settings))
    try:
        yield
    finally:
        _CALLER_SETTINGS.reset(token)


def _merged(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass
class LoopState:
    """Where the loop is: everything a checkpoint holds besides tensors."""

    epoch: int = 1  # the epoch in progress (1-based)
    batches_done: int = 0  # of that epoch
    step: int = 0  # optimizer steps over the run
    losses: list[float] = field(default_factory=list)  # of the epoch in progress
    history: list[dict] = field(default_factory=list)
    best_score: float = -float("inf")
    stale: int = 0
    finished: bool = False


def fit_loop(
    model: torch.nn.Module,
    param_groups: list[dict],
    train_loader,
    loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor],
    dev_score: Callable[[torch.nn.Module], float] | None,
    config: TrainingConfig,
    epochs: int | None = None,
    desc: str = "train",
    hooks: TrainingHooks | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
    settings: dict | None = None,
    setting_defaults: dict | None = None,
) -> list[dict]:
    """Train ``model`` in place; returns one record per epoch (loss, dev score). Keeps the best.
    ``hooks`` (e.g. a pruner) act around each step and say which epochs may be chosen.
    ``run_dir``: where checkpoints and the training log go; ``resume`` continues from its
    checkpoint, which must have been written under the same ``settings`` (model, training, data;
    one it lacks counts at its value in ``setting_defaults``)."""
    hooks = hooks or TrainingHooks()
    set_seed(process_seed(config.seed, process_state().process_index))  # the training steps' draws: this process's own
    epochs = config.epochs if epochs is None else epochs
    accelerator = training_accelerator(config, run_dir)
    if config.batch_size % accelerator.num_processes:
        raise LucidError(
            f"training.batch_size ({config.batch_size}) is the global batch: it must be a multiple of "
            f"the number of processes ({accelerator.num_processes})"
        )
    optimizer = torch.optim.AdamW(param_groups, weight_decay=config.weight_decay)
    total_steps = epochs * len(train_loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    shuffling = train_loader.generator  # its state at an epoch's start replays that epoch's order
    settings = _merged(
        {**(settings or {}), "training": config.learning_settings(), "stage": desc}, _CALLER_SETTINGS.get()
    )
    checkpoints = (
        Checkpoints(Path(run_dir) / CHECKPOINT_DIR, settings, accelerator, setting_defaults)
        if run_dir is not None
        else None
    )
    state, best_state, pending_rng = LoopState(), None, None
    if resume:
        if checkpoints is None:
            raise LucidError("resume: give the run folder that holds the checkpoint")
        state, best_state, pending_rng = checkpoints.restore(model, optimizer, scheduler, hooks, shuffling)
        if pending_rng is None:  # a checkpoint with no generators of this process's (written by fewer processes)
            pending_rng = ({}, {"seed": process_seed(config.seed, accelerator.process_index, state.step)})
        if state.batches_done == 0:  # at an epoch's start: the generators as they were then
            restore_generators(pending_rng)
            pending_rng = None
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    # Mixed precision: autocast the whole step (a family's loss may call more than ``forward``)
    # and nothing else: Accelerate's own wrapper of ``forward`` would stay on the model after
    # training, and evaluation would hand bf16 logits to numpy.
    unwrapped = accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    report = Progress(desc, epochs, len(train_loader), config, accelerator, run_dir, state.step if resume else None)

    while state.epoch <= epochs and not state.finished:
        epoch = state.epoch
        epoch_start = shuffling.get_state() if shuffling is not None else None
        model.train()
        report.start_epoch(epoch, state.batches_done)
        for i, batch in enumerate(train_loader):
            if i < state.batches_done:  # resumed mid-epoch: these steps are in the checkpoint
                continue
            if pending_rng is not None:
                restore_generators(pending_rng)
                pending_rng = None
            hooks.before_step(state.step)
            with accelerator.autocast():
                loss = loss_fn(model, batch)
            accelerator.backward(loss)
            hooks.after_backward(state.step)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            hooks.after_step(state.step)
            state.step, state.batches_done = state.step + 1, i + 1
            state.losses.append(
                accelerator.reduce(loss.detach(), reduction="mean").item()
            )  # over the processes' shares
            report.step(state, len(batch["input_ids"]) * accelerator.num_processes, scheduler.get_last_lr()[0])
            if (
                checkpoints
                and config.checkpoint_steps
                and state.step % config.checkpoint_steps == 0
                and state.batches_done < len(train_loader)
            ):
                checkpoints.save(state, unwrapped, optimizer, scheduler, hooks, epoch_start, best_state)
        record = {"epoch": epoch, "loss": float(np.mean(state.losses))}
        selectable = hooks.selectable(epoch)
        if dev_score is not None and selectable:
            unwrapped.eval()
            record["dev_score"] = dev_score(unwrapped)
            if record["dev_score"] > state.best_score:
                state.best_score, state.stale = record["dev_score"], 0
                best_state = {k: v.detach().cpu().clone() for k, v in unwrapped.trained_state_dict().items()}
            else:
                state.stale += 1
        state.history.append(record)
        report.end_epoch(record, state.step)
        state.finished = dev_score is not None and selectable and state.stale >= config.patience
        state.epoch, state.batches_done, state.losses = epoch + 1, 0, []
        if checkpoints:
            checkpoints.save(
                state,
                unwrapped,
                optimizer,
                scheduler,
                hooks,
                shuffling.get_state() if shuffling is not None else None,
                best_state,
            )
    report.close()
    continue_main_generators(accelerator)
    if best_state is not None:
        unwrapped.load_trained_state_dict(best_state)
    unwrapped.eval()
    return state.history


def restore_generators(generators: tuple[dict, dict]) -> None:
    """A process's generators as a checkpoint kept them, or ``({}, {"seed": n})``: seeded with n."""
    tensors, state = generators
    if "seed" in state:
        set_seed(state["seed"])
    else:
        set_rng_state(tensors, state)


def continue_main_generators(accelerator: Accelerator) -> None:
    """Every process takes process 0's generators, so that what follows training (a family's
    later stages) draws alike on every process, as it did before the loop."""
    if accelerator.num_processes > 1:
        states = [rng_state() if accelerator.is_main_process else None]
        torch.distributed.broadcast_object_list(states, src=0)
        set_rng_state(*states[0])


class Checkpoints:
    """The loop's checkpoint in ``directory`` (written by the main process only)."""

    def __init__(self, directory: Path, settings: dict, accelerator: Accelerator, defaults: dict | None = None):
        self.directory, self.settings, self.accelerator, self.defaults = directory, settings, accelerator, defaults

    def save(
        self,
        state: LoopState,
        model,
        optimizer,
        scheduler,
        hooks: TrainingHooks,
        shuffling_state: torch.Tensor | None,
        best_state: dict | None,
    ) -> None:
        """Called by every process (each one's generators go to the main one, which writes)."""
        generators = [rng_state()]
        if self.accelerator.num_processes > 1:
            gathered = [None] * self.accelerator.num_processes if self.accelerator.is_main_process else None
            torch.distributed.gather_object(generators[0], gathered, dst=0)
            generators = gathered
        if not self.accelerator.is_main_process:
            return
        tensors = {f"model.{k}": v for k, v in model.checkpoint_tensors().items()}
        optimizer_tensors, optimizer_json = optimizer_state(optimizer)
        (rng_tensors, rng_json), others = generators[0], generators[1:]
        hook_tensors, hook_json = hooks.state()
        tensors.update(optimizer_tensors)
        tensors.update(
            rng_tensors
        )  # process 0's at rng.*, as before there were several: process p's at process<p>.rng.*
        for process, (process_tensors, _) in enumerate(others, 1):
            tensors.update({f"process{process}.{k}": v for k, v in process_tensors.items()})
        tensors.update({f"hooks.{k}": v for k, v in hook_tensors.items()})
        tensors.update({f"best.{k}": v for k, v in (best_state or {}).items()})
        if shuffling_state is not None:
            tensors["shuffling"] = shuffling_state
        save_checkpoint(
            self.directory,
            tensors,
            {
                "settings": self.settings,
                "loop": asdict(state),
                "optimizer": optimizer_json,
                "scheduler": scheduler.state_dict(),
                "rng": rng_json,
                "rng_of_processes": [j for _, j in others],
                "hooks": hook_json,
                "has_best": best_state is not None,
            },
        )

    def restore(self, model, optimizer, scheduler, hooks: TrainingHooks, shuffling: torch.Generator | None):
        """The loop state, best state and this process's generator states that the checkpoint
        holds (None where it has none of this process's), with the model, optimizer, scheduler,
        hooks and data order set back to where they were."""
        tensors, saved = load_checkpoint(self.directory)
        check_same_settings(self.directory, saved["settings"], self.settings, self.defaults)
        model.load_checkpoint_tensors(prefixed(tensors, "model."))
        load_optimizer_state(optimizer, tensors, saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        hooks.load_state(prefixed(tensors, "hooks."), saved["hooks"])
        if shuffling is not None and "shuffling" in tensors:
            shuffling.set_state(tensors["shuffling"])
        best_state = prefixed(tensors, "best.") if saved["has_best"] else None
        state = LoopState(**saved["loop"])
        log.info("resuming %s at epoch %d, step %d", self.directory, state.epoch, state.step)
        process, others = self.accelerator.process_index, saved.get("rng_of_processes", [])
        if process == 0:
            generators = ({k: v for k, v in tensors.items() if k.startswith("rng.")}, saved["rng"])
        elif process <= len(others):
            generators = (prefixed(tensors, f"process{process}."), others[process - 1])
        else:
            generators = None
        return state, best_state, generators


class Progress:
    """Progress for people and for logs: a bar on a terminal, otherwise a line every
    ``log_steps`` steps and at each epoch end (step, loss, examples/s, ETA, dev score); always
    the JSON-lines log in the run folder, and Accelerate's trackers when configured. Main
    process only."""

    def __init__(
        self,
        desc: str,
        epochs: int,
        steps_per_epoch: int,
        config: TrainingConfig,
        accelerator: Accelerator,
        run_dir: Path | None,
        resumed_at: int | None,
    ):
        self.desc, self.epochs, self.steps_per_epoch, self.config = desc, epochs, steps_per_epoch, config
        self.accelerator, self.main = accelerator, accelerator.is_main_process
        self.bar_wanted = config.progress and self.main and sys.stderr.isatty()
        self.lines = config.progress and self.main and not self.bar_wanted
        self.bar = None
        self.started, self.first_step, self.examples = time.perf_counter(), resumed_at or 0, 0
        self.log_file = Path(run_dir) / TRAINING_LOG if run_dir is not None and self.main else None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._keep_records_up_to(resumed_at or 0)
        if config.trackers:
            accelerator.init_trackers(f"lucidlm-{desc}", config=config.learning_settings())

    def start_epoch(self, epoch: int, batches_done: int) -> None:
        self.epoch = epoch
        if self.bar_wanted:
            self.bar = tqdm(
                total=self.steps_per_epoch, initial=batches_done, desc=f"{self.desc} {epoch}/{self.epochs}", leave=False
            )

    def step(self, state: LoopState, examples: int, learning_rate: float) -> None:
        self.examples += examples
        loss = float(np.mean(state.losses[-20:]))
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}")
        if state.step % self.config.log_steps:
            return
        elapsed = time.perf_counter() - self.started
        speed = self.examples / elapsed if elapsed > 0 else 0.0
        steps_left = self.epochs * self.steps_per_epoch - state.step
        seconds_per_step = elapsed / max(state.step - self.first_step, 1)
        record = {
            "stage": self.desc,
            "event": "step",
            "epoch": state.epoch,
            "step": state.step,
            "loss": loss,
            "examples_per_second": speed,
            "learning_rate": learning_rate,
            "eta_seconds": steps_left * seconds_per_step,
        }
        self._record(record)
        if self.lines:
            progress_log.info(
                f"{self.desc} epoch {state.epoch}/{self.epochs} step {state.step}/{self.epochs * self.steps_per_epoch}: "
                f"loss {loss:.4f}, {speed:.1f} examples/s, ETA {timedelta(seconds=round(record['eta_seconds']))}"
            )

    def end_epoch(self, record: dict, step: int) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._record({"stage": self.desc, "event": "epoch", "step": step, **record})
        dev = f", dev score {record['dev_score']:.4f}" if "dev_score" in record else ""
        if self.lines:
            progress_log.info(
                f"{self.desc} epoch {record['epoch']}/{self.epochs} done at step {step}: loss {record['loss']:.4f}{dev}"
            )
        log.info("%s epoch %d: %s", self.desc, record["epoch"], record)

    def close(self) -> None:
        if self.config.trackers:
            self.accelerator.end_training()

    def _record(self, record: dict) -> None:
        if self.log_file is not None:
            with self.log_file.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.config.trackers:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def _keep_records_up_to(self, step: int) -> None:
        """A resumed run's log keeps the records of the steps its checkpoint holds, not those it
        redoes; a new run starts a new log."""
        kept = []
        for line in self.log_file.read_text().splitlines() if self.log_file.is_file() and step else []:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("step", 0) <= step:
                kept.append(line)
        staging = self.log_file.with_name(f".{TRAINING_LOG}.tmp")
        staging.write_text("".join(line + "\n" for line in kept))
        staging.replace(self.log_file)
