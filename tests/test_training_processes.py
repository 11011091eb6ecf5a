"""Training that survives being killed and that runs on several processes: real subprocesses (a
SIGKILL mid-epoch; ``torchrun --nproc_per_node 2`` on CPU with gloo) on a tiny BERT."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from safetensors import safe_open
from safetensors.torch import load_file
from typer.testing import CliRunner

from lucidlm.checkpoints import STATE_FILE
from lucidlm.cli import app
from lucidlm.layout import CHECKPOINT_DIR
from lucidlm.training import TRAINING_LOG, TrainingConfig

WORKER = Path(__file__).with_name("train_worker.py")
MODELS = {
    "joint": {"family": "bottleneck", "mode": "joint"},
    # pruning ramps from step 2 to step 12 of 16: a kill at step 7 falls mid-ramp, mid-epoch
    "sparse": {
        "family": "sparse",
        "sparsity": 0.5,
        "pruning_start": 0.25,
        "pruning_end": 1.5,
        "pruning_interval": 1,
        "pruning_score": "obert",
        "obert_gradients": 2,
        "obert_block": 4,
    },
    # a second forward pass a step (pairs of texts and their human edits) through the wrapped model
    "counterfactual": {
        "family": "bottleneck",
        "mode": "joint",
        "counterfactual_loss_weight": 1.0,
        "counterfactual_batch_size": 4,
    },
    # concept embeddings with IntCEM's intervention loss (its own draws: how many concepts, which order) and the
    # counterfactual-consistency loss
    "intervention": {
        "family": "bottleneck",
        "mode": "joint",
        "concept_layer": "embedding",
        "intervention_loss_weight": 1.0,
        "counterfactual_loss_weight": 1.0,
        "counterfactual_batch_size": 4,
    },
}


@pytest.fixture(scope="module")
def still_bert_dir(tmp_path_factory, tiny_bert_dir) -> Path:
    """The tiny BERT without dropout: two processes then compute exactly what one does."""
    path = tmp_path_factory.mktemp("still-bert")
    config = transformers.AutoConfig.from_pretrained(
        tiny_bert_dir, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    transformers.BertModel.from_pretrained(tiny_bert_dir, config=config).save_pretrained(path)
    transformers.AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(path)
    return path


def write_config(folder: Path, kind: str, backbone: Path, cebab: Path, training: dict | None = None, **model) -> Path:
    config = {
        "data": {
            "source": "cebab",
            "path": str(cebab),
            "subsample": {"train": 64, "dev": 32, "test": 32},
            **({"counterfactuals": "train_inclusive"} if MODELS[kind].get("counterfactual_loss_weight") else {}),
        },
        "model": {**MODELS[kind], "backbone": str(backbone), **model},
        "training": {
            "epochs": 2,
            "batch_size": 8,
            "seed": 0,
            "progress": True,
            "log_steps": 2,
            "checkpoint_steps": 3,
            **(training or {}),
        },
    }
    path = folder / f"{kind}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def train(
    config: Path, run: Path, weights: Path | None = None, *options: str, processes: int = 1
) -> subprocess.CompletedProcess:
    launcher = (
        [sys.executable]
        if processes == 1
        else [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(processes),
            "--master_port",
            str(free_port()),
        ]
    )
    command = [*launcher, str(WORKER), str(config), str(run), *options] + (
        ["--weights-dir", str(weights)] if weights else []
    )
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tensors(folder: Path, rank: int = 0, what: str = "") -> dict[str, torch.Tensor]:
    return load_file(str(folder / f"rank{rank}{what}.safetensors"))


def record(folder: Path, rank: int = 0) -> dict:
    return json.loads((folder / f"rank{rank}.json").read_text())


def assert_same_metrics(got, expected, path: str = "metrics") -> None:
    """The same metrics, the figures read off probabilities (ECE, NLL, a fitted temperature) up to
    the float rounding that summing in another order moves; a changed prediction changes a rate
    far more (1/32 of a 32-row split)."""
    if isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys(), path
        for key, value in expected.items():
            assert_same_metrics(got[key], value, f"{path}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), path
        for i, (g, e) in enumerate(zip(got, expected)):
            assert_same_metrics(g, e, f"{path}[{i}]")
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-7), path
    else:
        assert got == expected, path


def log_records(run: Path) -> list[dict]:
    timing = ("examples_per_second", "eta_seconds")
    return [
        {k: v for k, v in json.loads(line).items() if k not in timing}
        for line in (run / TRAINING_LOG).read_text().splitlines()
    ]


def checkpoint_state(run: Path) -> dict:
    with safe_open(str(run / CHECKPOINT_DIR / STATE_FILE), "pt") as f:
        return json.loads(f.metadata()["lucidlm_training_state"])


# killed at step 7: mid-epoch 1 (8 steps an epoch), the last checkpoint at step 6, before any dev
# evaluation; at step 11: mid-epoch 2, the last checkpoint at step 9, with epoch 1's best state
@pytest.mark.parametrize("kind, kill_at", [("joint", 7), ("sparse", 7), ("joint", 11), ("intervention", 11)])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(kind, kill_at, tmp_path, tiny_bert_dir, cebab_dir):
    # with dropout and random interventions: every generator must come back as it was
    config = write_config(tmp_path, kind, tiny_bert_dir, cebab_dir, random_intervention_rate=0.25)
    whole = train(config, tmp_path / "whole", tmp_path / "whole-weights")
    assert whole.returncode == 0, whole.stderr
    killed = train(config, tmp_path / "killed", None, "--kill-at-step", str(kill_at))
    assert killed.returncode == -9  # SIGKILL
    assert (tmp_path / "killed" / CHECKPOINT_DIR / STATE_FILE).is_file()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    saved = checkpoint_state(tmp_path / "killed")
    assert saved["loop"]["step"] == (kill_at - 1) // 3 * 3
    if kill_at > 8:  # a best state to keep: epoch 1's, chosen on dev
        assert saved["has_best"] and "dev_score" in saved["loop"]["history"][0]
    resumed = train(config, tmp_path / "killed", tmp_path / "resumed-weights", "--resume")
    assert resumed.returncode == 0, resumed.stderr

    expected, got = tensors(tmp_path / "whole-weights"), tensors(tmp_path / "resumed-weights")
    assert expected.keys() == got.keys()
    for name in expected:  # identical, not close
        assert torch.equal(expected[name], got[name]), name
    assert record(tmp_path / "whole-weights") == record(tmp_path / "resumed-weights")  # metrics and history
    assert log_records(tmp_path / "whole") == log_records(tmp_path / "killed")  # each step logged once
    assert not (tmp_path / "killed" / CHECKPOINT_DIR).exists()  # the saved run supersedes it


@pytest.mark.parametrize("kind", ["joint", "sparse", "counterfactual"])
def test_two_processes_train_what_one_process_does_with_the_same_global_batch(
    kind, tmp_path, still_bert_dir, cebab_dir
):
    config = write_config(tmp_path, kind, still_bert_dir, cebab_dir, dropout=0.0, random_intervention_rate=0.0)
    one = train(config, tmp_path / "one", tmp_path / "one-weights")
    assert one.returncode == 0, one.stderr
    two = train(config, tmp_path / "two", tmp_path / "two-weights", processes=2)
    assert two.returncode == 0, two.stderr

    rank0, rank1, single = (
        tensors(tmp_path / "two-weights", 0),
        tensors(tmp_path / "two-weights", 1),
        tensors(tmp_path / "one-weights"),
    )
    for name in single:
        assert torch.equal(rank0[name], rank1[name]), name  # the processes never diverge, masks included
        if name.startswith("subnetwork_masks."):
            assert torch.equal(rank0[name], single[name]), name  # pruning read the gradients of the whole batch
        else:
            # Adam divides by the gradient's running size: where a gradient is about 0, summing it in
            # another order can move that weight by a step of the learning rate (5e-5) in a step or two
            torch.testing.assert_close(
                rank0[name],
                single[name],
                rtol=1e-4,
                atol=2 * TrainingConfig().learning_rate,
                msg=lambda m: f"{name}: {m}",  # noqa: B023
            )
    assert_same_metrics(record(tmp_path / "two-weights")["metrics"], record(tmp_path / "one-weights")["metrics"])
    # one writer: every step and epoch logged once, one progress report, one run folder
    steps = [r["step"] for r in log_records(tmp_path / "two") if r["event"] == "step"]
    assert steps == list(range(2, 17, 2))
    assert two.stderr.count(f"{'sparse' if kind == 'sparse' else 'joint'} epoch 2/2 done") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_two_processes_clip_the_global_gradient_norm_as_one_process_does(tmp_path, still_bert_dir, cebab_dir):
    config = write_config(
        tmp_path,
        "joint",
        still_bert_dir,
        cebab_dir,
        training={"max_grad_norm": 0.02},
        dropout=0.0,
        random_intervention_rate=0.0,
    )
    one = train(config, tmp_path / "one", tmp_path / "one-weights", "--record-draws")
    assert one.returncode == 0, one.stderr
    two = train(config, tmp_path / "two", tmp_path / "two-weights", "--record-draws", processes=2)
    assert two.returncode == 0, two.stderr

    norms = [
        tensors(folder, rank, "-draws")["gradient_norms"]
        for folder, rank in (
            (tmp_path / "one-weights", 0),
            (tmp_path / "two-weights", 0),
            (tmp_path / "two-weights", 1),
        )
    ]
    assert len(norms[0]) == 16 and bool((norms[0] > 5 * 0.02).all())  # clipping binds at every step
    assert torch.equal(norms[1], norms[2])  # each process clips by the norm of the whole batch's gradient
    torch.testing.assert_close(norms[1], norms[0], rtol=1e-4, atol=0)
    rank0, rank1, single = (
        tensors(tmp_path / "two-weights", 0),
        tensors(tmp_path / "two-weights", 1),
        tensors(tmp_path / "one-weights"),
    )
    for name in single:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(
            rank0[name],
            single[name],
            rtol=1e-4,
            atol=2 * TrainingConfig().learning_rate,
            msg=lambda m: f"{name}: {m}",  # noqa: B023
        )
    assert_same_metrics(record(tmp_path / "two-weights")["metrics"], record(tmp_path / "one-weights")["metrics"])


@pytest.fixture(scope="module")
def two_processes_drawing(tmp_path_factory, tiny_bert_dir, cebab_dir) -> tuple[Path, Path]:
    """A two-process run with dropout and RandInt on, each process's draws recorded: (config, weights)."""
    folder = tmp_path_factory.mktemp("drawing")
    config = write_config(folder, "joint", tiny_bert_dir, cebab_dir, random_intervention_rate=0.25)
    result = train(config, folder / "run", folder / "weights", "--record-draws", processes=2)
    assert result.returncode == 0, result.stderr
    return config, folder / "weights"


def test_each_process_draws_its_own_dropout_and_random_interventions(two_processes_drawing):
    _, weights = two_processes_drawing
    draws = [tensors(weights, rank, "-draws") for rank in (0, 1)]
    randint = [d["randint"] for d in draws]
    assert (
        randint[0].shape == randint[1].shape == (16, 4, 4)
    )  # 16 steps, 4 rows each (the global batch is 8), 4 concepts
    # each process pads its share to its own longest text: the first step's first dropout masks, flattened,
    # compared on the elements both have (one seed for all: the same)
    dropout = [d["dropout"].flatten() for d in draws]
    dropout = [m[: min(len(dropout[0]), len(dropout[1]))] for m in dropout]
    # rows j and j + 4 of a global batch are set (RandInt) and dropped out apart, from the first step on
    assert not torch.equal(randint[0][0], randint[1][0])
    assert not torch.equal(dropout[0], dropout[1])
    # the distributions: each process keeps a concept at the configured rate, independently of the other
    # (the same choice on both with probability 0.25² + 0.75²); dropout (0.1) likewise (0.1² + 0.9²)
    for mask, rate, spread in ((randint, 0.25, 0.08), (dropout, 0.1, 0.02)):
        for m in mask:
            assert abs(m.float().mean().item() - rate) < spread, (m.float().mean(), rate)
        agreement = (mask[0] == mask[1]).float().mean().item()
        assert abs(agreement - (rate**2 + (1 - rate) ** 2)) < 1.5 * spread, agreement
    # and the processes still train one model: their gradients are averaged
    rank0, rank1 = tensors(weights, 0), tensors(weights, 1)
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert record(weights, 0) == record(weights, 1)


def test_a_killed_two_process_run_resumes_each_process_draws(two_processes_drawing, tmp_path):
    config, whole = two_processes_drawing
    killed = train(config, tmp_path / "killed", None, "--kill-at-step", "7", processes=2)
    assert killed.returncode != 0 and (tmp_path / "killed" / CHECKPOINT_DIR / STATE_FILE).is_file()
    assert checkpoint_state(tmp_path / "killed")["loop"]["step"] == 6
    resumed = train(config, tmp_path / "killed", tmp_path / "resumed", "--resume", processes=2)
    assert resumed.returncode == 0, resumed.stderr
    for rank in (0, 1):
        expected, got = tensors(whole, rank), tensors(tmp_path / "resumed", rank)
        assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected), rank
        assert record(whole, rank) == record(tmp_path / "resumed", rank)


def test_the_running_calibration_is_pooled_over_processes(tmp_path):
    """Each process calibrates on its share of a batch: all hold what one computes on the whole batch."""
    command = [str(WORKER), "--calibration"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, *command, str(tmp_path / "one")], capture_output=True, text=True, timeout=300, env=env
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(free_port()),
            *command,
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert two.returncode == 0, two.stderr
    single, rank0, rank1 = (
        tensors(tmp_path / folder, rank, "-calibration")["table"]
        for folder, rank in (("one", 0), ("two", 0), ("two", 1))
    )
    assert not torch.equal(single[0, :3, :3], 5.0 * (2 * torch.eye(3) - 1))  # calibration moved the table
    assert torch.equal(rank0, rank1)
    torch.testing.assert_close(rank0, single)


def test_progress_goes_to_logs_as_lines_when_the_output_is_not_a_terminal(tmp_path, tiny_bert_dir, cebab_dir):
    config = write_config(tmp_path, "joint", tiny_bert_dir, cebab_dir)
    result = train(config, tmp_path / "run")
    lines = [line for line in result.stderr.splitlines() if line.startswith("joint epoch")]
    assert [line.split(":")[0] for line in lines[:2]] == ["joint epoch 1/2 step 2/16", "joint epoch 1/2 step 4/16"]
    assert "examples/s, ETA " in lines[0]
    assert lines[-1].startswith("joint epoch 2/2 done at step 16: loss ") and ", dev score " in lines[-1]
    events = [r["event"] for r in log_records(tmp_path / "run")]
    assert events.count("step") == 8 and events.count("epoch") == 2


def test_resuming_fails_cleanly_on_a_corrupt_checkpoint_a_changed_setting_or_nothing_to_resume(
    tmp_path, tiny_bert_dir, cebab_dir
):
    config = write_config(tmp_path, "joint", tiny_bert_dir, cebab_dir)
    run = tmp_path / "run"
    assert train(config, run, None, "--kill-at-step", "5").returncode == -9
    runner = CliRunner()

    fresh = runner.invoke(app, ["train", str(config), "-o", str(run)])
    assert fresh.exit_code == 1 and "holds the checkpoint of an interrupted run; add --resume" in fresh.output

    changed = yaml.safe_load(config.read_text())
    changed["model"]["concept_loss_weight"] = 2.0
    (tmp_path / "changed.yaml").write_text(yaml.safe_dump(changed))
    result = runner.invoke(app, ["train", str(tmp_path / "changed.yaml"), "-o", str(run), "--resume"])
    assert result.exit_code == 1
    assert "model.concept_loss_weight is 1.0 in the checkpoint and 2.0 now" in result.output
    assert "Traceback" not in result.output

    # another dev split (model selection's) or test split (the run reports it): the same training data
    for split in ("dev", "test"):
        changed = yaml.safe_load(config.read_text())
        changed["data"]["subsample"][split] = 31
        (tmp_path / f"changed-{split}.yaml").write_text(yaml.safe_dump(changed))
        result = runner.invoke(app, ["train", str(tmp_path / f"changed-{split}.yaml"), "-o", str(run), "--resume"])
        assert result.exit_code == 1, result.output
        output = " ".join(result.output.split())
        assert (
            f"the {split} split is not the one the checkpoint was written with" in output and "Traceback" not in output
        )

    checkpoint = run / CHECKPOINT_DIR / STATE_FILE
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    result = runner.invoke(app, ["train", str(config), "-o", str(run), "--resume"])
    assert result.exit_code == 1 and f"{checkpoint}: truncated or corrupt checkpoint" in " ".join(result.output.split())

    shutil.rmtree(run / CHECKPOINT_DIR)
    result = runner.invoke(app, ["train", str(config), "-o", str(run), "--resume"])
    assert result.exit_code == 1 and "no checkpoint to resume from" in result.output


def test_a_truncated_model_file_is_one_line_naming_it(tiny_runs, tmp_path):
    run = tmp_path / "joint"
    shutil.copytree(tiny_runs["joint"], run)
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    result = CliRunner().invoke(app, ["predict", str(run), "The food was great."])
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert f"{weights}: truncated or corrupt" in output and "Traceback" not in output


def test_a_tracker_that_is_not_installed_is_refused_before_training(tiny_bert_dir, cebab_small):
    from importlib.util import find_spec

    from lucidlm import ConceptBottleneckLM, LucidError

    model = ConceptBottleneckLM.from_backbone(str(tiny_bert_dir), task=cebab_small.spec)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(LucidError, match="training.trackers: Unsupported logging capability: nosuch"):
        model.fit(cebab_small.train, epochs=1, trackers=["nosuch"], progress=False)
    if find_spec("tensorboard") is None:
        with pytest.raises(
            LucidError, match="training.trackers: 'tensorboard' is not installed here \\(pip install tensorboard\\)"
        ):
            model.fit(cebab_small.train, epochs=1, trackers=["tensorboard"], progress=False)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing trained


def test_a_checkpoint_written_before_an_option_existed_resumes_at_the_options_default_only():
    from lucidlm import LucidError
    from lucidlm.checkpoints import check_same_settings

    saved = {"model": {"mode": "joint"}}  # written before mixup_alpha was an option
    defaults = {"model": {"mode": "joint", "mixup_alpha": 0.0}}
    check_same_settings(Path("checkpoint"), saved, {"model": {"mode": "joint", "mixup_alpha": 0.0}}, defaults)
    with pytest.raises(LucidError, match="model.mixup_alpha is 0.0 in the checkpoint and 0.4 now"):
        check_same_settings(Path("checkpoint"), saved, {"model": {"mode": "joint", "mixup_alpha": 0.4}}, defaults)
    with pytest.raises(LucidError, match="model.mixup_alpha is '\\(not set\\)' in the checkpoint and 0.0 now"):
        check_same_settings(Path("checkpoint"), saved, {"model": {"mode": "joint", "mixup_alpha": 0.0}})


def test_process_0_draws_from_the_seed_itself_and_every_other_process_from_its_own():
    from lucidlm.training import process_seed

    assert [process_seed(s, 0) for s in (0, 1, 7)] == [0, 1, 7]  # one process trains as before
    seeds = {process_seed(s, p, step) for s in range(4) for p in range(4) for step in (0, 6) if (p, step) != (0, 0)}
    assert len(seeds) == 4 * 4 * 2 - 4 and not seeds & set(
        range(4)
    )  # no process draws another's (or another seed's) stream
    assert all(0 <= s < 2**32 for s in seeds)  # NumPy's range
