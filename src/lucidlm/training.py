"""The training loop, on Hugging Face Accelerate: CPU, one GPU, or many with ``accelerate launch``.

Model selection reads the dev split only, after every epoch; the best state is restored at the
end; training stops early after ``patience`` epochs without improvement.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

log = logging.getLogger(__name__)


@dataclass
class TrainingConfig:
    epochs: int = 5
    batch_size: int = 16
    eval_batch_size: int = 64
    learning_rate: float = 5e-5  # the pretrained backbone
    head_learning_rate: float = 1e-2  # the freshly initialised heads (the label head reads probabilities in [0, 1])
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    patience: int = 2  # epochs without a better dev score before stopping
    seed: int = 0
    progress: bool = True


def set_seed(seed: int) -> None:
    """Python, NumPy and torch generators: the same seed on the same machine gives the same run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
) -> list[dict]:
    """Train ``model`` in place; returns one record per epoch (loss, dev score). Keeps the best.
    ``hooks`` (e.g. a pruner) act around each step and say which epochs may be chosen."""
    hooks = hooks or TrainingHooks()
    set_seed(config.seed)
    epochs = config.epochs if epochs is None else epochs
    accelerator = Accelerator()
    optimizer = torch.optim.AdamW(param_groups, weight_decay=config.weight_decay)
    total_steps = epochs * len(train_loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)

    history, best_score, best_state, stale, step = [], -float("inf"), None, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        losses = []
        bar = tqdm(train_loader, desc=f"{desc} {epoch}/{epochs}", disable=not config.progress, leave=False)
        for batch in bar:
            hooks.before_step(step)
            loss = loss_fn(model, batch)
            accelerator.backward(loss)
            hooks.after_backward(step)
            if config.max_grad_norm:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            hooks.after_step(step)
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        record = {"epoch": epoch, "loss": float(np.mean(losses))}
        unwrapped = accelerator.unwrap_model(model)
        selectable = hooks.selectable(epoch)
        if dev_score is not None and selectable:
            unwrapped.eval()
            record["dev_score"] = dev_score(unwrapped)
            if record["dev_score"] > best_score:
                best_score, stale = record["dev_score"], 0
                best_state = {k: v.detach().cpu().clone() for k, v in unwrapped.state_dict().items()}
            else:
                stale += 1
        history.append(record)
        log.info("%s epoch %d: %s", desc, epoch, record)
        if dev_score is not None and selectable and stale >= config.patience:
            break
    unwrapped = accelerator.unwrap_model(model)
    if best_state is not None:
        unwrapped.load_state_dict(best_state)
    unwrapped.eval()
    return history
