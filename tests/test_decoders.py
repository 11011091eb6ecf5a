"""Modern decoder backbones (issue 33): tiny random Llama, Qwen2, Mistral, Gemma-2, Phi-3, GPT-2
and OPT, stored in bf16 as the hub ships them, with their tokenizers' conventions, through every
family in float32 and bf16, with and without a LoRA adapter; padding, pad tokens, precision,
frozen backbones, adapters saved apart from their base and merged on export."""

import json

import pytest
import torch
from safetensors import safe_open
from tiny_decoders import ARCHITECTURES, save_tiny_decoder
from typer.testing import CliRunner

from lucidlm import ConceptValues, load_pretrained
from lucidlm.backbone import load_backbone, load_tokenizer
from lucidlm.errors import LucidError
from lucidlm.models import FAMILIES, ConceptModel

TEXTS = ["Great pasta, but we waited an hour.", "Rude."]
FAST = dict(epochs=1, batch_size=8, progress=False)
OPTIONS = {
    "sparse": {"sparsity": 0.5, "pruning_start": 0.2, "pruning_end": 0.8, "pruning_interval": 1, "obert_gradients": 2},
    "bottleneck": {"mode": "joint"},
}
VARIANTS = {
    "float32": {"dtype": "float32"},
    "bf16": {"dtype": "auto"},
    "float32-lora": {"dtype": "float32", "adapter": {"r": 4}},
    "bf16-lora": {"dtype": "bfloat16", "adapter": {"r": 4}},
}


@pytest.fixture(scope="session")
def decoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("decoders")
    return {name: save_tiny_decoder(root / name, name) for name in ARCHITECTURES}


@pytest.fixture(scope="module")
def rows(cebab_small):
    return cebab_small.train.select(range(24)), cebab_small.dev.select(range(8))


def build(family, path, spec, max_length=48, **options):
    return FAMILIES.get(family).from_backbone(
        str(path), task=spec, max_length=max_length, **{**OPTIONS.get(family, {}), **options}
    )


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", ["standard", "bottleneck", "prototype", "sparse"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_family_on_every_decoder(arch, family, variant, decoders, rows, cebab_small, tmp_path):
    options = VARIANTS[variant]
    if family == "sparse" and "adapter" in options:
        with pytest.raises(LucidError, match="prunes the backbone's own weights"):
            build(family, decoders[arch], cebab_small.spec, **options)
        return
    model = build(family, decoders[arch], cebab_small.spec, **options)
    assert model.config.dtype == ("float32" if variant.startswith("float32") else "bfloat16")  # auto: the checkpoint's
    assert model.config.pooling == "last" and model.tokenizer.pad_token is not None
    train, dev = rows
    model.fit(train, eval_data=dev, **FAST)
    predictions = model.predict(TEXTS)
    assert all(sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5) for p in predictions)
    explanation = model.explain(TEXTS[0])
    alone = explanation.prediction  # a batch of one: the same answer up to float rounding
    assert alone.label == predictions[0].label and all(len(t.tokens) > 0 for t in explanation.tokens)
    assert list(alone.probabilities.values()) == pytest.approx(list(predictions[0].probabilities.values()), abs=1e-3)
    if isinstance(model, ConceptModel):
        after = model.intervene(TEXTS[0], ConceptValues({"service": "Negative"}))[0].after
        assert after.concepts["service"].value == "Negative"
    model.save_pretrained(tmp_path / "run")
    loaded = load_pretrained(tmp_path / "run")
    assert loaded.config == model.config and loaded.predict(TEXTS) == predictions
    assert loaded.explain(TEXTS[0]).to_dict() == explanation.to_dict()
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as f:
        backbone_keys = [k for k in f.keys() if k.startswith("backbone.")]
    if "adapter" in options:  # the run holds the adapter and heads, not the base
        assert backbone_keys and all(".lora_" in k for k in backbone_keys)


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_texts_pooled_vector_does_not_depend_on_its_batch(arch, side, decoders, cebab_small):
    """Last-token pooling reads the last real token and positions count from each text's first
    real token, whichever side the tokenizer pads."""
    tokenizer = load_tokenizer(str(decoders[arch]))
    tokenizer.padding_side = side
    model = FAMILIES.get("standard")(
        FAMILIES.get("standard").config_class(backbone=str(decoders[arch])),
        cebab_small.spec,
        load_backbone(str(decoders[arch])),
        tokenizer,
    )
    alone = model.forward_texts([TEXTS[1]]).pooled
    beside_a_longer_one = model.forward_texts([TEXTS[0] * 3, TEXTS[1]]).pooled[1]
    assert torch.allclose(alone[0], beside_a_longer_one, atol=1e-5)


def test_a_tokenizer_without_a_pad_token_gets_one_on_every_path(decoders, cebab_small, rows, tmp_path):
    """Llama-3's tokenizer has no pad token: passed to the constructor it gets the one a loaded
    tokenizer gets, and the run trains, saves and loads with the same answers."""
    from transformers import AutoTokenizer

    path = decoders["llama"]
    raw = AutoTokenizer.from_pretrained(path)
    assert raw.pad_token is None and raw.padding_side == "left"
    standard = FAMILIES.get("standard")
    model = standard(
        standard.config_class(backbone=str(path), max_length=48), cebab_small.spec, load_backbone(str(path)), raw
    )
    assert model.tokenizer.pad_token == load_tokenizer(str(path)).pad_token == "<|end_of_text|>"
    model.fit(*rows, **FAST)
    model.save_pretrained(tmp_path / "run")
    assert load_pretrained(tmp_path / "run").predict(TEXTS) == model.predict(TEXTS)


def test_a_bf16_checkpoint_records_its_dtype_and_loads_back_in_it(decoders, cebab_small, rows, tmp_path):
    model = build("bottleneck", decoders["qwen2"], cebab_small.spec, dtype="auto")
    assert next(model.backbone.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if not n.startswith("backbone."))  # heads
    model.fit(*rows, **FAST)
    model.save_pretrained(tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert saved["dtype"] == "bfloat16"
    loaded = load_pretrained(tmp_path / "run")
    assert next(loaded.backbone.parameters()).dtype == torch.bfloat16 and loaded.predict(TEXTS) == model.predict(TEXTS)


INTCEM = {"concept_layer": "embedding", "random_intervention_rate": 0.25, "intervention_loss_weight": 5.0}


@pytest.mark.parametrize("family, options", [("standard", {}), ("bottleneck", {}), ("bottleneck", INTCEM)])
def test_bf16_mixed_precision_trains_and_evaluates_in_float32(family, options, tiny_bert_dir, cebab_small, rows):
    """Autocast covers the whole step (IntCEM's policy reads concept probabilities: float32)."""
    model = build(family, tiny_bert_dir, cebab_small.spec, max_length=64, **options)
    model.fit(*rows, mixed_precision="bf16", **FAST)
    inferred = model.infer(cebab_small.test.select(range(8)))
    assert inferred["label_logits"].dtype.name == "float32"
    assert 0 <= model.evaluate(cebab_small.test.select(range(8)))["task"]["accuracy"] <= 1


def test_fp16_without_a_gpu_is_one_clear_line(tiny_bert_dir, cebab_small, rows):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(LucidError, match="fp16 needs a CUDA GPU"):
        build("standard", tiny_bert_dir, cebab_small.spec).fit(*rows, mixed_precision="fp16", **FAST)


def test_gradient_checkpointing_trains_the_same_model(decoders, cebab_small, rows):
    """It recomputes activations instead of keeping them; the weights it reaches are the same."""
    plain = build("bottleneck", decoders["llama"], cebab_small.spec, dtype="float32").fit(*rows, **FAST)
    checkpointed = build("bottleneck", decoders["llama"], cebab_small.spec, dtype="float32")
    checkpointed.fit(*rows, gradient_checkpointing=True, **FAST)
    assert not any(
        getattr(m, "gradient_checkpointing", False) for m in checkpointed.backbone.modules()
    )  # training only
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_a_frozen_backbone_trains_the_heads_only_and_saves_them_alone(tiny_bert_dir, cebab_small, rows, tmp_path):
    model = build("bottleneck", tiny_bert_dir, cebab_small.spec, freeze=True)
    backbone_before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    heads_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    model.fit(*rows, **FAST)
    assert all(torch.equal(v, backbone_before[k]) for k, v in model.backbone.state_dict().items())
    assert any(not torch.equal(v, heads_before[k]) for k, v in model.state_dict().items() if k in heads_before)
    model.save_pretrained(tmp_path / "run")
    with safe_open(str(tmp_path / "run" / "model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith("backbone.")]
    assert load_pretrained(tmp_path / "run").predict(TEXTS) == model.predict(TEXTS)


def test_an_adapter_run_refuses_another_base_in_one_line(decoders, cebab_small, rows, tmp_path):
    model = build("standard", decoders["mistral"], cebab_small.spec, adapter={"r": 4}).fit(*rows, **FAST)
    model.save_pretrained(tmp_path / "run")
    base = load_backbone(str(decoders["mistral"]))
    with torch.no_grad():
        next(base.parameters()).add_(0.01)  # the base retrained, or another revision
    base.save_pretrained(decoders["mistral"].parent / "mistral-changed")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["model"]["backbone"] = str(decoders["mistral"].parent / "mistral-changed")
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    with pytest.raises(LucidError, match="is not the one this run was trained on") as refused:
        load_pretrained(tmp_path / "run")
    assert "\n" not in str(refused.value)


def test_lora_trains_few_parameters_saves_small_and_exports_merged(decoders, cebab_small, rows, tmp_path):
    from lucidlm.cli import app

    full = build("bottleneck", decoders["phi3"], cebab_small.spec, dtype="float32")
    lora = build("bottleneck", decoders["phi3"], cebab_small.spec, dtype="float32", adapter={"r": 2})
    trains = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert trains < 0.2 * sum(p.numel() for p in full.parameters())
    lora.fit(*rows, **FAST)
    lora.save_pretrained(tmp_path / "lora")
    full.save_pretrained(tmp_path / "full")
    size = lambda run: (run / "model.safetensors").stat().st_size  # noqa: E731
    assert size(tmp_path / "lora") < 0.25 * size(tmp_path / "full")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "lora"), "--merge", "-o", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    merged = load_pretrained(tmp_path / "merged")
    assert merged.config.adapter is None and not merged.config.freeze
    for a, b in zip(merged.predict(TEXTS), lora.predict(TEXTS)):
        assert a.label == b.label
        assert list(a.probabilities.values()) == pytest.approx(list(b.probabilities.values()), abs=1e-4)


def test_a_training_checkpoint_holds_only_what_trains(decoders, cebab_small, rows, tmp_path):
    """Resume state of an adapter run: the adapter, the heads and their optimizer state, never the base."""
    from lucidlm.checkpoints import STATE_FILE
    from lucidlm.layout import CHECKPOINT_DIR

    model = build("bottleneck", decoders["qwen2"], cebab_small.spec, adapter={"r": 4})
    model.fit(*rows, run_dir=tmp_path / "run", **FAST)
    with safe_open(str(tmp_path / "run" / CHECKPOINT_DIR / STATE_FILE), "pt") as f:
        weights = [k for k in f.keys() if k.startswith(("model.backbone.", "best.backbone."))]
        optimizer = [k for k in f.keys() if k.startswith("optimizer.")]
    assert weights and all(".lora_" in k for k in weights)
    trainable = sum(1 for p in model.parameters() if p.requires_grad)
    assert len({k.split(".")[1] for k in optimizer}) == trainable  # Adam's state of the trained parameters only


def test_a_compiled_backbone_saves_and_loads_like_the_rest(decoders, cebab_small, tmp_path):
    model = build("standard", decoders["llama"], cebab_small.spec, dtype="float32", compile=True)
    plain = build("standard", decoders["llama"], cebab_small.spec, dtype="float32")
    plain.load_state_dict(model.state_dict())  # the same keys: compiling wraps the forward, not the weights
    compiled = model.predict(TEXTS)
    for a, b in zip(compiled, plain.predict(TEXTS)):
        assert a.label == b.label
        assert list(a.probabilities.values()) == pytest.approx(list(b.probabilities.values()), abs=1e-5)
    model.save_pretrained(tmp_path / "run")
    loaded = load_pretrained(tmp_path / "run")
    assert loaded.config.compile and loaded.predict(TEXTS)[0].label == compiled[0].label


@pytest.mark.parametrize("score", ["movement", "obert"])
def test_gradient_checkpointing_recomputes_through_the_subnetworks(score, decoders, cebab_small, rows):
    """SparseCBM's batched pass under checkpointing: the recompute runs each concept's masks, so
    training (pruning scores included) reaches the weights and masks it reaches without."""
    options = dict(dtype="float32", pruning_score=score)
    plain = build("sparse", decoders["llama"], cebab_small.spec, **options).fit(*rows, **FAST)
    checkpointed = build("sparse", decoders["llama"], cebab_small.spec, **options)
    checkpointed.fit(*rows, gradient_checkpointing=True, **FAST)
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-5), name
    for name, layer in plain.subnetworks.items():
        assert torch.equal(layer.mask, checkpointed.subnetworks[name].mask), name


def test_no_inference_cache_stays_alive_while_training(decoders, cebab_small, rows):
    """Dev evaluation builds each layer's K masked weight copies; the next training step drops them."""
    model = build("sparse", decoders["gpt2"], cebab_small.spec, dtype="float32")
    model.fit(*rows, **FAST)
    model.predict(TEXTS)  # builds the cache
    assert all(layer._inference_weights is not None for layer in model.subnetworks.values())
    model.train()
    batch = model.encoder.batch(TEXTS)
    model(batch["input_ids"], batch["attention_mask"]).label_logits.sum().backward()
    assert all(layer._inference_weights is None for layer in model.subnetworks.values())


def test_the_page_and_the_report_say_how_the_backbone_trained(decoders, cebab_small, rows, tmp_path):
    from fastapi.testclient import TestClient

    from lucidlm.web.app import create_app
    from lucidlm.web.report import write_report

    model = build("bottleneck", decoders["llama"], cebab_small.spec, adapter={"r": 4}).fit(*rows, **FAST)
    model.save_pretrained(tmp_path / "run")
    said = "float32 weights, LoRA adapter (r = 4, alpha = 32, on all-linear); base frozen"  # model.dtype: float32 by default
    assert TestClient(create_app(model, tmp_path / "run")).get("/api/info").json()["backbone_training"] == said
    assert said in write_report(tmp_path / "run", tmp_path / "report.html", limit=8, examples=1).read_text()
    frozen = build("standard", decoders["llama"], cebab_small.spec, dtype="float32", freeze=True)
    assert frozen.summary()["backbone_training"] == "float32 weights, frozen (heads only)"


NEURON_LAYERS = {"llama": "all", "qwen2": "all", "mistral": "all", "gemma2": "all", "opt": "ffn", "gpt2": "ffn"}


@pytest.mark.parametrize("arch", NEURON_LAYERS)
def test_structured_subnetworks_on_modern_decoders(arch, decoders, cebab_small, rows):
    """Neuron-level masks: heads that follow grouped-query attention (a unit is one key-value group),
    gated MLPs (gate, up and down together); the gathered batched pass equals one concept after
    another, in float32."""
    from lucidlm.models import SparseConceptLM

    model = SparseConceptLM.from_backbone(
        str(decoders[arch]),
        task=cebab_small.spec,
        granularity="neuron",
        masked_layers=NEURON_LAYERS[arch],
        max_length=48,
        sparsity=0.5,
        pruning_start=0.2,
        pruning_end=0.8,
        pruning_interval=1,
        obert_gradients=2,
    )
    kinds = {g.kind for g in model.unit_groups}
    assert kinds == ({"heads", "neurons"} if NEURON_LAYERS[arch] == "all" else {"neurons"})
    if arch == "llama":
        heads = next(g for g in model.unit_groups if g.kind == "heads")
        assert heads.num_units == 2 and sorted(heads.sizes.values()) == [16, 16, 32, 32]  # 2 KV groups of 2 query heads
        gated = next(g for g in model.unit_groups if g.kind == "neurons")
        assert len(gated.makers) == 2  # gate_proj and up_proj
    model.fit(*rows, **FAST)  # prunes to whole units
    for group in model.unit_groups:
        units = group.unit_masks()
        for name, layer in [*group.makers.items(), group.reader]:
            features = units.repeat_interleave(group.sizes[name], dim=1)
            mask = layer.in_out(layer.mask)
            expected = features.unsqueeze(1) if name in group.makers else features.unsqueeze(2)
            assert torch.equal(mask, expected.expand_as(mask)), name
    model.eval()
    batch = model.encoder.batch(TEXTS)
    with torch.no_grad():
        batched, _ = model.concept_states(batch["input_ids"], batch["attention_mask"])
        one_by_one, _ = model.concept_states_one_by_one(batch["input_ids"], batch["attention_mask"])
    for a, b in zip(batched, one_by_one):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert model.explain(TEXTS[0]).subnetworks["head_responsibility" if "heads" in kinds else "top_neurons"]


def test_fused_projections_are_refused_at_neuron_level_naming_the_alternative(decoders, cebab_small):
    from lucidlm.models import SparseConceptLM

    with pytest.raises(LucidError, match=r"fused gate_up projection cannot be gathered\). Use granularity: weight"):
        SparseConceptLM.from_backbone(
            str(decoders["phi3"]), task=cebab_small.spec, granularity="neuron", masked_layers="ffn"
        )
    with pytest.raises(LucidError, match="opt's attention reshapes by the number of heads.*Use masked_layers: ffn"):
        SparseConceptLM.from_backbone(str(decoders["opt"]), task=cebab_small.spec, granularity="neuron")


def test_obert_past_the_free_memory_is_refused_in_one_line(decoders, cebab_small, rows, monkeypatch):
    import types

    import lucidlm.pruning

    monkeypatch.setattr(lucidlm.pruning.psutil, "virtual_memory", lambda: types.SimpleNamespace(available=2**20))
    model = build("sparse", decoders["llama"], cebab_small.spec, pruning_score="obert")
    with pytest.raises(
        LucidError, match=r"obert keeps 2 gradients .* GiB here, and this machine has 0.0 GiB free"
    ) as refused:
        model.fit(*rows, **FAST)
    assert "\n" not in str(refused.value)
    build("sparse", decoders["llama"], cebab_small.spec, pruning_score="movement").fit(
        *rows, **FAST
    )  # O(parameters): trains


def test_qlora_without_cuda_is_one_clear_line(decoders, cebab_small):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(LucidError, match="4bit needs a CUDA GPU") as refused:
        build("standard", decoders["llama"], cebab_small.spec, quantization="4bit", adapter={"r": 4})
    assert "\n" not in str(refused.value)
    with pytest.raises(LucidError, match="cannot train; add model.adapter"):
        build("standard", decoders["llama"], cebab_small.spec, quantization="4bit")


def test_the_attention_kernel_is_a_setting_that_changes_no_answer(decoders, cebab_small, tmp_path):
    with pytest.raises(LucidError, match="model.attn_implementation: 'sdpa' for .*gemma2.*does not support") as refused:
        build("standard", decoders["gemma2"], cebab_small.spec, attn_implementation="sdpa")  # its soft-capping
    assert "\n" not in str(refused.value)
    eager = build("standard", decoders["llama"], cebab_small.spec, dtype="float32", attn_implementation="eager")
    sdpa = build("standard", decoders["llama"], cebab_small.spec, dtype="float32", attn_implementation="sdpa")
    sdpa.load_state_dict(eager.state_dict())
    assert eager.backbone.config._attn_implementation == "eager"
    for a, b in zip(eager.predict(TEXTS), sdpa.predict(TEXTS)):
        assert list(a.probabilities.values()) == pytest.approx(list(b.probabilities.values()), abs=1e-4)
    eager.save_pretrained(tmp_path / "run")
    assert load_pretrained(tmp_path / "run").backbone.config._attn_implementation == "eager"


def test_a_sparse_run_on_a_grouped_query_llama_is_explained_and_evaluated_through_the_cli(
    decoders, cebab_dir, tmp_path
):
    import yaml

    from lucidlm.cli import app

    config = {
        "data": {"source": "cebab", "path": str(cebab_dir), "subsample": {"train": 24, "dev": 8, "test": 8}},
        "model": {
            "family": "sparse",
            "backbone": str(decoders["llama"]),
            "dtype": "bfloat16",
            "max_length": 48,
            **OPTIONS["sparse"],
        },
        "training": {"epochs": 1, "batch_size": 8, "progress": False},
        "output_dir": str(tmp_path / "run"),
    }
    (tmp_path / "sparse.yaml").write_text(yaml.safe_dump(config))
    runner = CliRunner()
    for command in (
        ["train", str(tmp_path / "sparse.yaml")],
        ["explain", str(tmp_path / "run"), TEXTS[0], "--json"],
        ["evaluate", str(tmp_path / "run"), "--suite", "faithfulness,interventions", "--samples", "4", "--json"],
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, (command[0], result.output[-2000:])
    explained = json.loads(runner.invoke(app, ["explain", str(tmp_path / "run"), TEXTS[0], "--json"]).output)
    assert len(explained["subnetworks"]["head_responsibility"]["layers.0"][0]) == 4  # one share per query head


def test_an_encoder_given_a_left_padding_tokenizer_pads_right(tiny_bert_dir, cebab_small):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir, padding_side="left")
    standard = FAMILIES.get("standard")
    model = standard(
        standard.config_class(backbone=str(tiny_bert_dir)),
        cebab_small.spec,
        load_backbone(str(tiny_bert_dir)),
        tokenizer,
    )
    alone = model.forward_texts([TEXTS[1]]).pooled[0]
    assert torch.allclose(alone, model.forward_texts([TEXTS[0] * 3, TEXTS[1]]).pooled[1], atol=1e-5)
