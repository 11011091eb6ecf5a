"""A toy pruning score with its own options, defined in this file with no change to the library:
registered, a SparseCBM config names it and its options, and the model prunes by it, saves and loads."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from lucidlm.errors import LucidError
from lucidlm.models import SparseConceptLM, load_pretrained
from lucidlm.pruning import PRUNING_SCORES, PruningScore, density
from lucidlm.training import TrainingConfig


@dataclass
class SeededOptions:
    seed: int = 0


class SeededScore(PruningScore):
    """Random scores from its own seed: what any score must beat."""

    Options = SeededOptions

    def scores(self, name, layer):
        generator = torch.Generator().manual_seed(self.options.seed + sum(map(ord, name)))
        return torch.rand(layer.mask.shape, generator=generator).to(layer.weight.device)


@pytest.fixture(autouse=True, scope="module")
def _toy_registered():
    """The toy score is registered while this file's tests run, and only then."""
    with PRUNING_SCORES.registered("toy-seeded", SeededScore):
        yield


def masks(model) -> dict[str, torch.Tensor]:
    return {name: layer.mask.clone() for name, layer in model.subnetworks.items()}


def test_a_registered_score_prunes_with_its_own_options(tiny_bert_dir, cebab_small, tmp_path):
    def trained(seed):
        model = SparseConceptLM.from_backbone(
            str(tiny_bert_dir),
            task=cebab_small.spec,
            sparsity=0.5,
            pruning_start=0.25,
            pruning_end=1.0,
            pruning_interval=1,
            pruning_score="toy-seeded",
            pruning_options={"seed": seed},
        )
        model.fit(cebab_small.train, eval_data=cebab_small.dev, config=TrainingConfig(epochs=1, progress=False))
        return model

    one, same, other = trained(1), trained(1), trained(2)
    first, second, third = masks(one), masks(same), masks(other)
    assert first and all(torch.equal(first[k], second[k]) for k in first)  # its seed decides, repeatably
    assert any(not torch.equal(first[k], third[k]) for k in first)
    assert density(one.subnetworks) == pytest.approx([0.5] * len(cebab_small.spec.concepts), abs=0.02)
    one.save_pretrained(tmp_path / "toy")
    loaded = load_pretrained(tmp_path / "toy")
    assert loaded.config.pruning_options == {"seed": 1}
    assert all(torch.equal(masks(loaded)[k], first[k]) for k in first)


def test_its_options_are_checked_when_the_config_is_read(tiny_bert_dir, cebab_small):
    from lucidlm.models.subnetworks import SparseConfig

    legacy = SparseConfig.read({"obert_gradients": 3, "obert_damp": 1e-6}, "an older run's config.json")
    assert legacy.pruning_options == {"gradients": 3, "damp": 1e-6}  # what older runs wrote, read as today's
    with pytest.raises(LucidError, match=r"pruning_options: unknown key\(s\) \['sead'\]"):
        SparseConceptLM.from_backbone(
            str(tiny_bert_dir), task=cebab_small.spec, pruning_score="toy-seeded", pruning_options={"sead": 1}
        )
