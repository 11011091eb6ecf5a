"""Shared fixtures: tiny random BERT and GPT-2 backbones (mechanics), the real data sets (truth)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
torch.set_num_threads(min(2, os.cpu_count() or 1))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():  # a checkout elsewhere can point at the data
    DATA = Path(os.environ.get("LUCIDLM_DATA", DATA))
CEBAB = DATA / "cebab"

# The browser tests drive Debian's Chromium (never a downloaded one). A developer without it skips
# them; CI, whose .ci/run installs it, never does: there a missing browser fails the tests.
CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
)


@pytest.fixture(scope="session")
def cebab_dir() -> Path:
    assert CEBAB.is_dir(), f"the CEBaB data is expected at {CEBAB} (shared/data beside the checkout)"
    return CEBAB


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide random BERT with the default backbone's WordPiece tokenizer."""
    from tiny_runs import save_tiny_bert

    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> Path:
    """A 2-layer random GPT-2 with a small byte-level BPE tokenizer that, like GPT-2's, has no pad token."""
    from tokenizers import ByteLevelBPETokenizer

    path = tmp_path_factory.mktemp("tiny-gpt2")
    corpus = [
        "The food was great and the service was slow.",
        "Loud room, rude waiter, cold soup.",
        "We loved the ambiance; the pasta was fine.",
        "Terrible noise but a friendly staff.",
    ] * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    tokenizer = transformers.GPT2TokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    config = transformers.GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128)
    torch.manual_seed(0)
    transformers.GPT2Model(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def cebab_small(cebab_dir):
    """CEBaB with small fixed subsets: enough for mechanics, seconds to train on a tiny model."""
    from lucidlm import load_task

    task = load_task("cebab", path=cebab_dir)
    task.train, task.dev, task.test = task.train.sample(96), task.dev.sample(48), task.test.sample(48)
    return task


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, tiny_bert_dir, cebab_dir) -> dict[str, Path]:
    """Saved runs of every family (standard, joint, sparse, proto), as ``lucidlm train`` writes
    them, trained for seconds on the tiny BERT. Shared: a test that changes a run copies it first."""
    from tiny_runs import MODELS, train_tiny_run

    folder = tmp_path_factory.mktemp("tiny-runs")
    return {kind: train_tiny_run(folder, kind, tiny_bert_dir, cebab_dir) for kind in MODELS}
