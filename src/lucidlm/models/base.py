"""What every model family shares: a backbone with pooling, typed predictions, and
``save_pretrained`` / ``from_pretrained`` as a JSON config plus safetensors (never pickles)."""

from __future__ import annotations

import functools
import inspect
import json
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import MISSING as NO_DEFAULT
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModel

from ..adapters import AdapterConfig, BaseRecord, adapter_config, base_model, frozen, is_adapter_key, with_adapter
from ..backbone import (
    DEFAULT_BACKBONE,
    DTYPES,
    POOLINGS,
    QUANTIZATIONS,
    backbone_max_length,
    default_pooling,
    is_decoder_only,
    load_backbone,
    load_tokenizer,
    pool,
    position_ids,
    prepared_tokenizer,
    torch_dtype,
)
from ..calibration import Temperatures, calibration_figures, fit_temperature, reliability_bins
from ..config import from_dict
from ..data import MISSING, Split, TaskSpec, TextEncoder
from ..errors import LucidError, Unsupported
from ..explain import Explanation
from ..intervene import Suggestion, as_correction, suggest_corrections
from ..layout import BACKBONE_DIR, CONFIG_FILE, WEIGHTS_FILE
from ..metrics import selection_score, task_metrics
from ..outputs import ConceptPrediction, InterventionResult, ModelOutput, Prediction
from ..registry import Registry
from ..training import TrainingConfig, TrainingHooks, fit_loop, set_seed
from ..version import __version__


@contextmanager
def evaluation_mode(module: nn.Module):
    """``module.eval()`` while the block runs (dropout off), then the mode it had."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@dataclass
class ModelConfig:
    """Settings every family has; a family's config adds its own."""

    backbone: str = DEFAULT_BACKBONE
    pooling: str | None = None  # mean | cls | last; None picks mean for encoders, last for decoders
    max_length: int = 128  # training texts are truncated to this many tokens
    dropout: float = 0.1
    # The backbone's weights: float32 | bfloat16 | float16 | auto (the checkpoint's, recorded as
    # resolved). Heads and the numerics that need it run in float32 whatever this is.
    dtype: str = "float32"
    attn_implementation: str | None = None  # eager | sdpa | flash_attention_2; None: transformers' (sdpa where it can)
    adapter: AdapterConfig | None = None  # a LoRA adapter (adapters.AdapterConfig): only it and the heads train
    freeze: bool = False  # the backbone does not train (heads only)
    quantization: str | None = None  # 4bit | 8bit base weights (QLoRA; bitsandbytes on CUDA): with an adapter or freeze
    compile: bool = False  # torch.compile the backbone's forward (in place: the saved keys stay as they are)
    # Keys that older runs and configs wrote under another name: {old: new}, renamed when read.
    renamed_keys: ClassVar[dict[str, str]] = {}

    @classmethod
    def read(cls, options: dict, where: str):
        """The config from a mapping (a YAML config's ``model``, a saved ``config.json``, keywords),
        older key names renamed, unknown ones refused by name."""
        renamed = {cls.renamed_keys.get(key, key): value for key, value in options.items()}
        return from_dict(cls, renamed, where)

    def __post_init__(self):
        if self.pooling is not None:
            POOLINGS.check(self.pooling, "pooling")
        if self.dtype != "auto":
            torch_dtype(self.dtype)
        self.adapter = adapter_config(self.adapter)
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise LucidError(f"model.quantization: expected one of {list(QUANTIZATIONS)}, found {self.quantization!r}")
        if self.quantization is not None and self.adapter is None and not self.freeze:
            raise LucidError(
                f"model.quantization: {self.quantization} weights cannot train; add model.adapter (QLoRA) "
                "or set model.freeze: true"
            )

    @property
    def trains_part_of_backbone(self) -> bool:
        """Whether the backbone's own weights stay as loaded (an adapter, or frozen): a saved run
        then holds only what trained and names its base."""
        return self.adapter is not None or self.freeze


FAMILIES: Registry = Registry("model.family")


class LucidModel(nn.Module):
    """The contract every family keeps (docs/ARCHITECTURE.md).

    A family sets ``family`` and ``config_class`` (registered by name on subclassing), and
    defines ``forward(input_ids, attention_mask) -> ModelOutput``, ``training_loss`` and
    ``explain``. What it can do beyond predicting and explaining is declared by its type
    (``ConceptModel``, ``SubnetworkModel``, ``PrototypeModel``) and by ``corrections``, the
    correction values its ``intervene`` takes; callers ask those, never the object.

    ``fit`` is one skeleton for every family: seeds, the training loop on Accelerate (dev
    selection, early stopping, best state), with the family's hooks around it.
    """

    family: str = ""
    config_class: type = ModelConfig
    corrections: tuple[type, ...] = ()  # the correction values ``intervene`` takes

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "family" in cls.__dict__ and cls.family:
            FAMILIES.register(cls.family)(cls)
        if "infer" in cls.__dict__:
            cls.infer = shared_over_processes(cls.__dict__["infer"])

    def __init__(self, config: ModelConfig, spec: TaskSpec, backbone: nn.Module, tokenizer):
        super().__init__()
        if config.pooling is None:
            config.pooling = default_pooling(backbone.config)
        if config.dtype == "auto":  # recorded as resolved: the run loads back in the same dtype
            config.dtype = next(k for k, v in DTYPES.items() if v == next(backbone.parameters()).dtype)
        backbone.config.use_cache = False  # classification reads one pass: no key-value cache
        tokenizer = prepared_tokenizer(tokenizer)
        self.base_record = BaseRecord.of(backbone, config.backbone) if config.trains_part_of_backbone else None
        if config.freeze:
            frozen(backbone)
        if config.adapter is not None:
            backbone = with_adapter(backbone, config.adapter)
        self.config, self.spec, self.backbone, self.tokenizer = config, spec, backbone, tokenizer
        # Decoders count positions from the first column, so left padding would shift a text: they get
        # positions from the attention mask (backbone.position_ids). Encoders keep their own (RoBERTa's
        # start past its padding index).
        forward = inspect.signature(base_model(backbone).forward).parameters
        self.positions_from_mask = is_decoder_only(backbone.config) and "position_ids" in forward
        if not is_decoder_only(backbone.config):
            tokenizer.padding_side = "right"  # an encoder's absolute positions count from the first column
        if config.compile:
            backbone.compile()
        limit = backbone_max_length(backbone, tokenizer)
        if not 0 < config.max_length <= limit:
            raise LucidError(
                f"model.max_length: expected 1..{limit} tokens (the most {config.backbone!r} reads), "
                f"found {config.max_length}"
            )
        self.encoder = TextEncoder(tokenizer, config.max_length)
        self.dropout = nn.Dropout(config.dropout)
        self.hidden_size = backbone.config.hidden_size
        self.training_history: list[dict] = []
        self.temperatures = Temperatures()  # fitted on dev after training (``calibrate``)

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone: str = DEFAULT_BACKBONE, task: TaskSpec | None = None, seed: int = 0, **config):
        """A new model over a pretrained backbone (hub name or local folder); heads seeded by ``seed``."""
        if task is None:
            raise LucidError(f"{cls.__name__}.from_backbone: give the task spec (task=...)")
        model_config = cls.config_class.read({**config, "backbone": backbone}, cls.__name__)
        set_seed(seed)
        loaded = load_backbone(
            backbone, model_config.dtype, model_config.attn_implementation, model_config.quantization
        )
        return cls(model_config, task, loaded, load_tokenizer(backbone))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LucidModel:
        model = load_pretrained(directory)
        if not isinstance(model, cls):
            raise LucidError(f"{directory}: holds a {type(model).__name__}, not a {cls.__name__}")
        return model

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def summary(self) -> dict:
        """What this model is, for people (the report, the page, the evaluation suite's tables):
        family, backbone, and the settings that tell its runs apart. Families add theirs."""
        return {
            "family": self.family,
            "mode": None,
            "backbone": self.config.backbone,
            "backbone_training": self.backbone_training(),
        }

    def backbone_training(self) -> str:
        """How the backbone's weights were held and trained, in words (the page, the report)."""
        c = self.config
        if c.adapter is not None:
            targets = (
                c.adapter.target_modules
                if isinstance(c.adapter.target_modules, str)
                else ", ".join(c.adapter.target_modules)
            )
            how = f"LoRA adapter (r = {c.adapter.r}, alpha = {c.adapter.alpha:g}, on {targets}); base frozen"
        else:
            how = "frozen (heads only)" if c.freeze else "fully fine-tuned"
        return f"{c.dtype}{', ' + c.quantization if c.quantization else ''} weights, {how}"

    def token_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backbone's last hidden states ``[B, T, H]``, in float32 whatever the backbone's
        dtype (every head reads float32), with positions counted from each text's first real
        token, so that a text's states never depend on its batch."""
        positions = {"position_ids": position_ids(attention_mask)} if self.positions_from_mask else {}
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **positions).last_hidden_state
        return hidden.float()

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return pool(self.token_states(input_ids, attention_mask), attention_mask, self.config.pooling)

    # ---- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def forward_texts(self, texts, text_pairs=None) -> ModelOutput:
        """One forward pass over user texts (checked: non-empty), read as training and ``evaluate``
        read them (``TextEncoder``); the output says how many tokens of each text were read."""
        self.eval()
        batch = self.encoder.batch(texts, text_pairs)
        output = self(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
        return replace(output, tokens_read=batch["attention_mask"].sum(1), tokens_total=batch["tokens_total"])

    def predict(self, texts, pairs=None) -> list[Prediction]:
        """The label (and concepts, for concept models) of each text (with its pair, on pair tasks)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        pairs = [pairs] if isinstance(pairs, str) else pairs
        output = self.forward_texts(texts, pairs)
        concept_probs = self.concept_probabilities(output.concept_logits)
        return [self.to_prediction(t, output, i, concept_probs) for i, t in enumerate(texts)]

    def explain(self, text: str, *, pair: str | None = None, **options) -> Explanation:
        """The prediction of one text and what the model's own forward pass says about it."""
        raise Unsupported(f"a {self.family} model gives no explanations")

    def intervene(self, texts, correction) -> list[InterventionResult]:
        """The prediction of each text before and after a correction: concept values
        (``{"service": "Negative"}`` or ``ConceptValues``), a ``SubnetworkRewiring``, … as the
        family's ``corrections`` allow. A correction it cannot take is refused here, for all."""
        correction = as_correction(correction)
        if not isinstance(correction, self.corrections):
            takes = ", ".join(kind.__name__ for kind in self.corrections) or "no corrections"
            raise Unsupported(
                f"a {self.family} model cannot take a {type(correction).__name__} correction; it takes {takes}"
            )
        texts = [texts] if isinstance(texts, str) else list(texts)
        return self.apply_correction(texts, correction)

    def apply_correction(self, texts: list[str], correction) -> list[InterventionResult]:
        raise NotImplementedError

    @torch.no_grad()
    def infer(self, split: Split, batch_size: int = 64) -> dict[str, np.ndarray]:
        """Label logits ``[N, C]`` of a split (families add their own outputs)."""
        self.eval()
        logits = [
            self(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)).label_logits.cpu()
            for batch in self.encoder.loader(split, batch_size)
        ]
        return {"label_logits": torch.cat(logits).numpy()}

    def evaluate(self, split: Split, batch_size: int = 64) -> dict:
        """Task metrics on a split (families add their own)."""
        return self.label_metrics(split, self.infer(split, batch_size)["label_logits"])

    def label_metrics(self, split: Split, label_logits: np.ndarray) -> dict:
        """``n``, the task metrics and, for classes, the reliability bins of the label's probabilities
        (``calibration.reliability_bins``: a reliability diagram) with the temperature they used."""
        metrics = {"n": len(split), "task": task_metrics(self.spec, split.labels, label_logits)}
        if not self.spec.is_regression:
            probs = torch.from_numpy(np.asarray(label_logits)).softmax(-1).numpy()
            metrics["calibration"] = {
                "temperature": self.temperatures.label,
                "bins": reliability_bins(probs, split.labels),
            }
        return metrics

    def to_prediction(
        self, text: str, output: ModelOutput, i: int, concept_probs: list[torch.Tensor] | None = None
    ) -> Prediction:
        """Row ``i`` of a forward pass as a ``Prediction``; ``concept_probs`` overrides the concepts."""
        if self.spec.is_regression:
            label, probabilities = float(output.label_logits[i, 0]), {}
        else:
            p = output.label_logits[i].softmax(-1).tolist()
            label, probabilities = self.spec.classes[int(np.argmax(p))], dict(zip(self.spec.classes, p))
        if concept_probs is None:
            concept_probs = self.concept_probabilities(output.concept_logits)
        concepts = {}
        for spec, probs in zip(self.spec.concepts, concept_probs):
            p = probs[i].tolist()
            concepts[spec.name] = ConceptPrediction(spec.values[int(np.argmax(p))], dict(zip(spec.values, p)))
        reading = {}
        if output.tokens_read is not None:
            read, total = int(output.tokens_read[i]), int(output.tokens_total[i])
            reading = {"tokens_read": read, "tokens_total": total, "truncated": read < total}
        return Prediction(text=text, label=label, probabilities=probabilities, concepts=concepts, **reading)

    # ---- calibration (docs/methods.md §7.2) ---------------------------------------------------------
    def calibrated(self, label_logits: torch.Tensor) -> torch.Tensor:
        """Label logits divided by the fitted temperature: every family's forward pass (and a
        concept model's label recomputed from set concepts) ends here, so every path reads them."""
        t = self.temperatures.label
        return label_logits if t == 1.0 else label_logits / t

    def concept_probabilities(self, concept_logits) -> list[torch.Tensor]:
        """Each concept's probabilities as shown and as the policies weigh them: softmax of its
        logits over its temperature. What the label reads of a concept is the concept layer's, as
        trained: these temperatures leave the label as it is."""
        return [
            (logits.float() / self.temperatures.concepts.get(spec.name, 1.0)).softmax(-1)  # float32 under autocast too
            for spec, logits in zip(self.spec.concepts, concept_logits)
        ]

    def calibrate(self, split: Split, batch_size: int = 64, split_name: str = "dev") -> Temperatures:
        """Fit the label's temperature (classification) and each concept's, by NLL on ``split``
        (dev), after training; the figures before and after are kept with them."""
        self.temperatures = Temperatures()
        inferred = self.infer(split, batch_size)
        fitted = Temperatures(fitted_on=split_name, before={"concepts": {}}, after={"concepts": {}})
        if not self.spec.is_regression:
            logits = inferred["label_logits"]
            fitted.label = fit_temperature(logits, split.labels)
            fitted.before["label"] = calibration_figures(logits, split.labels)
            fitted.after["label"] = calibration_figures(logits, split.labels, fitted.label)
        for k, (spec, logits) in enumerate(zip(self.spec.concepts, inferred.get("concept_logits", []))):
            known = split.concepts[:, k] != MISSING
            if known.sum() == 0:
                continue
            gold, logits = split.concepts[known, k], np.asarray(logits)[known]
            fitted.concepts[spec.name] = fit_temperature(logits, gold)
            fitted.before["concepts"][spec.name] = calibration_figures(logits, gold)
            fitted.after["concepts"][spec.name] = calibration_figures(logits, gold, fitted.concepts[spec.name])
        self.temperatures = fitted
        return fitted

    # ---- training: one skeleton, the family's hooks ----------------------------------------------
    def fit(
        self,
        train: Split,
        eval_data: Split | None = None,
        config: TrainingConfig | None = None,
        run_dir: str | Path | None = None,
        resume: bool = False,
        **overrides,
    ):
        """Train on ``train``; model selection and early stopping read ``eval_data`` (dev), never test.
        ``run_dir``: where the training log and checkpoints go; ``resume``: continue from its
        checkpoint (written with the same model, training settings and data)."""
        config = replace(config or TrainingConfig(), **overrides)
        self.temperatures = Temperatures()  # the loop trains the logits themselves
        train = self.training_rows(train, config)
        self.check_training_data(train, config)
        set_seed(config.seed)
        self.before_training(train, config)
        loader = self.encoder.loader(train, config.batch_size, shuffle=True, seed=config.seed)
        hooks = self.training_hooks(len(loader), config)
        dev_score = None if eval_data is None else (lambda model: model.dev_score(eval_data, config.eval_batch_size))
        settings = {
            "family": self.family,
            "model": asdict(self.config),
            "data": {
                "train": train.fingerprint(),
                **({"dev": eval_data.fingerprint()} if eval_data is not None else {}),
            },
        }
        defaults = {"model": {f.name: f.default for f in fields(self.config) if f.default is not NO_DEFAULT}}
        with (
            self.parameters_frozen(self.parameters_outside_training()),
            self.checkpointing(config.gradient_checkpointing),
        ):
            self.training_history = fit_loop(
                self,
                self.param_groups(config),
                loader,
                self.training_loss,
                dev_score,
                config,
                desc=self.training_stage,
                hooks=hooks,
                run_dir=run_dir,
                resume=resume,
                settings=settings,
                setting_defaults=defaults,
            )
        self.after_training(train, eval_data, config, hooks)
        if eval_data is not None and config.calibrate:
            self.calibrate(eval_data, config.eval_batch_size)
        return self

    def parameters_outside_training(self) -> list[nn.Parameter]:
        """Parameters that the training loss never reaches: the backbone's that the pooled vector
        does not depend on (e.g. BERT's pooler: lucidlm pools itself), found by one backward pass
        in eval mode (no random numbers drawn). Data-parallel training must leave them out."""
        if not any(p.requires_grad for p in self.backbone.parameters()):  # frozen: nothing to find
            return []
        ids = torch.tensor([[self.tokenizer.cls_token_id or self.tokenizer.bos_token_id or 0] * 2], device=self.device)
        was_training = self.training
        self.eval()
        with torch.enable_grad():
            self.pooled(ids, torch.ones_like(ids)).sum().backward()
        unreached = [p for p in self.backbone.parameters() if p.requires_grad and p.grad is None]
        self.zero_grad(set_to_none=True)
        self.train(was_training)
        return unreached

    @contextmanager
    def checkpointing(self, enabled: bool):
        """Gradient checkpointing of the backbone while the block runs (training.gradient_checkpointing):
        its activations are recomputed in the backward pass instead of kept (non-reentrant, so a
        frozen embedding or an adapter needs no input that requires grad)."""
        base = base_model(self.backbone)
        if not enabled:
            yield
            return
        if not base.supports_gradient_checkpointing:
            raise LucidError(f"training.gradient_checkpointing: {type(base).__name__} does not support it")
        with warnings.catch_warnings():  # transformers 5 renames it activation checkpointing (the old name stays to v6)
            warnings.simplefilter("ignore", FutureWarning)
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False, **self.checkpoint_options()}
            )
        try:
            yield
        finally:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                base.gradient_checkpointing_disable()

    def checkpoint_options(self) -> dict:
        """Options of ``torch.utils.checkpoint`` a family needs (SparseCBM: recompute through the
        subnetwork the forward pass ran)."""
        return {}

    @contextmanager
    def parameters_frozen(self, parameters: list[nn.Parameter]):
        """``requires_grad`` off for ``parameters`` while the block runs, then as it was."""
        for p in parameters:
            p.requires_grad_(False)
        try:
            yield
        finally:
            for p in parameters:
                p.requires_grad_(True)

    def training_loss(self, forward: nn.Module, batch: dict) -> torch.Tensor:
        """The loss of one batch; ``forward`` is this model as the training loop wraps it."""
        raise NotImplementedError

    @property
    def training_stage(self) -> str:
        """What the progress bar calls the training loop."""
        return self.family

    def check_training_data(self, train: Split, config: TrainingConfig) -> None:
        """Refuse, before any training, data or settings the family cannot train on."""

    def training_rows(self, train: Split, config: TrainingConfig) -> Split:
        """The rows the training loop reads (a family may hold some out for a later stage)."""
        return train

    def before_training(self, train: Split, config: TrainingConfig) -> None:
        """After seeding, before the loop (e.g. prototypes started from training examples)."""

    def training_hooks(self, steps_per_epoch: int, config: TrainingConfig) -> TrainingHooks | None:
        """What the loop calls around each step (``training.TrainingHooks``), or None."""
        return None

    def after_training(self, train: Split, eval_data: Split | None, config: TrainingConfig, hooks) -> None:
        """After the best epoch is restored (e.g. a second stage, calibration, projection)."""

    def dev_score(self, split: Split, batch_size: int = 64) -> float:
        """What model selection maximises on dev."""
        return selection_score(self.evaluate(split, batch_size))

    def param_groups(self, config: TrainingConfig) -> list[dict]:
        """The backbone at ``learning_rate``, the freshly initialised rest at ``head_learning_rate``."""
        heads = [p for n, p in self.named_parameters() if not n.startswith("backbone.")]
        return trainable_groups(
            [
                {"params": list(self.backbone.parameters()), "lr": config.learning_rate},
                {"params": heads, "lr": config.head_learning_rate},
            ]
        )

    # ---- persistence ----------------------------------------------------------------------
    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict without the base backbone's weights when they stay as loaded (an
        adapter, or frozen): what training changes, what a best epoch and a saved run keep."""
        state = self.state_dict()
        if not self.config.trains_part_of_backbone:
            return state
        return {k: v for k, v in state.items() if not k.startswith("backbone.") or is_adapter_key(k)}

    def load_trained_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """``trained_state_dict``'s entries back; every one of them must be there, and nothing else."""
        missing, unexpected = self.load_state_dict(state, strict=not self.config.trains_part_of_backbone)
        expected = self.trained_state_dict().keys()
        lacking = [k for k in missing if k in expected]
        if lacking or unexpected:
            raise LucidError(
                f"checkpoint: {'missing ' + repr(lacking[:3]) if lacking else ''}"
                f"{' unexpected ' + repr(unexpected[:3]) if unexpected else ''} (a run of another model.adapter "
                "or model.freeze?)"
            )

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """What ``model.safetensors`` holds: the trained state dict (families may add tensors)."""
        return {k: v.detach().contiguous() for k, v in self.trained_state_dict().items()}

    def load_checkpoint_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.load_trained_state_dict(tensors)

    def json_state(self) -> dict:
        """Learned state that is not a tensor (e.g. prototypes' nearest training texts); saved in
        config.json. Families override this and ``load_json_state``."""
        return {}

    def load_json_state(self, state: dict) -> None:
        pass

    def merge_adapter(self) -> LucidModel:
        """This model as a self-contained run: the adapter merged into the base weights (W + BA)
        and the whole backbone saved, loaded without the base (``lucidlm export --merge``). In place."""
        if self.config.adapter is not None:
            self.backbone = self.backbone.merge_and_unload()
        self.config = replace(self.config, adapter=None, freeze=False, quantization=None)
        self.base_record = None
        return self

    def save_pretrained(self, directory: str | Path) -> Path:
        """``config.json`` + ``model.safetensors`` + ``backbone/`` (its config and tokenizer).

        Written to a temporary folder first, so a failure leaves nothing half-written.
        """
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            meta = {
                "lucidlm_version": __version__,
                "family": self.family,
                "model": asdict(self.config),
                "task": self.spec.to_dict(),
                "training_history": self.training_history,
                "calibration": self.temperatures.to_dict(),
                "state": self.json_state(),
                **({"base": asdict(self.base_record)} if self.base_record is not None else {}),
            }
            (staging / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
            save_file(self.checkpoint_tensors(), str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
            self.backbone.config.save_pretrained(staging / BACKBONE_DIR)
            self.tokenizer.save_pretrained(staging / BACKBONE_DIR)
            directory.mkdir(exist_ok=True)
            for item in staging.iterdir():
                target = directory / item.name
                if target.is_dir():
                    shutil.rmtree(target)
                item.replace(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory


def trainable_groups(groups: list[dict]) -> list[dict]:
    """Optimizer parameter groups with only the parameters that train (an adapter's, not the
    frozen base's); a group left empty is dropped."""
    groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    return [g for g in groups if g["params"]]


def shared_over_processes(infer):
    """``infer`` for several processes training together: each infers a contiguous share of the
    rows and every process gets all of them back in row order (no row twice, as padding a last
    batch would give), so dev scores, calibration and metrics agree and cost 1/N each. Every
    family's ``infer`` is wrapped so (``LucidModel.__init_subclass__``); one process: unchanged."""

    @functools.wraps(infer)
    def wrapper(self, split: Split, *args, **kwargs):
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        processes = torch.distributed.get_world_size() if distributed else 1
        if processes == 1 or getattr(self, "_inferring_share", False):
            return infer(self, split, *args, **kwargs)
        rank, n = torch.distributed.get_rank(), len(split)
        self._inferring_share = True
        try:
            share = infer(
                self, split.select(range(rank * n // processes, (rank + 1) * n // processes)), *args, **kwargs
            )
        finally:
            self._inferring_share = False
        shares = [None] * processes
        torch.distributed.all_gather_object(shares, share)
        return {key: _concatenate([s[key] for s in shares]) for key in share}

    return wrapper


def _concatenate(parts: list):
    """Row-wise results of each share, joined: arrays, or lists of arrays (one per concept)."""
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return [np.concatenate(column) for column in zip(*parts)]


def canonical_family(family: str, options: dict) -> tuple[str, dict]:
    """``family: bottleneck, mode: standard`` (configs and runs from before the standard model
    was a family of its own) is the ``standard`` family; the bottleneck's options it had are
    dropped (they had no effect on it)."""
    if family == "bottleneck" and options.get("mode") == "standard":
        standard = FAMILIES.get("standard")
        known = {f.name for f in fields(standard.config_class)}
        return "standard", {k: v for k, v in options.items() if k in known}
    return family, options


def read_run_config(directory: str | Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise LucidError(f"{directory}: no such folder")
    path = directory / CONFIG_FILE
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict) or "family" not in meta or not (directory / WEIGHTS_FILE).is_file():
        raise LucidError(
            f"{directory}: not a saved lucidlm run (expected {CONFIG_FILE} with a 'family' and {WEIGHTS_FILE}, "
            "as save_pretrained writes them)"
        )
    meta["family"], meta["model"] = canonical_family(meta["family"], meta.get("model", {}))
    FAMILIES.get(meta["family"], f"{path}: family")
    return meta


def load_pretrained(directory: str | Path) -> LucidModel:
    """Any family's saved run; the loaded model predicts exactly what the saved one did."""
    directory = Path(directory)
    meta = read_run_config(directory)
    cls = FAMILIES.get(meta["family"])
    config = cls.config_class.read(meta["model"], f"{directory / CONFIG_FILE}: model")
    spec = TaskSpec.from_dict(meta["task"])
    if config.trains_part_of_backbone:  # the run holds the adapter and heads: its base comes from where it was trained
        if "base" not in meta:
            raise LucidError(
                f"{directory / CONFIG_FILE}: an adapter or frozen-backbone run that names no base backbone"
            )
        backbone = load_backbone(config.backbone, config.dtype, config.attn_implementation, config.quantization)
    else:
        options = {} if config.attn_implementation is None else {"attn_implementation": config.attn_implementation}
        backbone = AutoModel.from_config(
            AutoConfig.from_pretrained(directory / BACKBONE_DIR), dtype=torch_dtype(config.dtype), **options
        )
    tokenizer = load_tokenizer(str(directory / BACKBONE_DIR))
    model = cls(config, spec, backbone, tokenizer)
    if model.base_record is not None:
        BaseRecord(**meta["base"]).check(model.base_record, str(directory))
    try:
        tensors = load_file(str(directory / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise LucidError(
            f"{directory / WEIGHTS_FILE}: truncated or corrupt ({e}); train the run again or restore the file"
        ) from None
    model.load_checkpoint_tensors(tensors)
    model.training_history = meta.get("training_history", [])
    model.temperatures = Temperatures.from_dict(meta.get("calibration"))  # runs from before calibration: 1.0
    model.load_json_state(meta.get("state", {}))
    return model.eval()


# ---- capabilities: what a family can do beyond predicting and explaining, as types ------------


class ConceptModel(LucidModel):
    """A model whose label reads human concepts (docs/methods.md §1): every forward pass gives concept
    logits and the concept layer's states (``ModelOutput.concept_states``), from which the label
    is recomputed with concepts set to given values without another backbone pass; ``intervene``
    takes ``ConceptValues``."""

    confirming_changes_state = False  # see ConceptBottleneckLM

    def suggest_corrections(self, texts: str | list[str]) -> list[Suggestion]:
        """What to ask a person first about each text: the concept whose correction is most likely
        to change the decision, or the pair that would (``intervene.suggest_corrections``)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        self.eval()
        with torch.no_grad():
            return suggest_corrections(self, self.forward_texts(texts).concept_states)

    def learned_intervention_policy(self) -> nn.Module | None:
        """The intervention policy ψ this model learned (intervention_objective: published), or None.
        A method, not a class attribute: a class-level None would shadow the submodule nn.Module
        registers under the same name."""
        return None

    def concept_logits_of(self, states) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def concept_activations(self, states) -> list[torch.Tensor]:
        """What the label head reads of each concept."""
        raise NotImplementedError

    def label_from_concepts(self, activations: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def concept_value_readings(self, states) -> list[torch.Tensor]:
        """What the label head would read of each concept from its value alone (no text beside
        it), shaped as ``concept_activations``: the split of a contribution into value and text."""
        raise NotImplementedError

    def intervened_activations(self, states, values: torch.Tensor, correct_only: bool = True) -> list[torch.Tensor]:
        """``concept_activations`` with concept k of row i set to ``values[i, k]`` (``MISSING``: as
        predicted); setting concept k changes concept k's activation only."""
        raise NotImplementedError

    def intervened_label_logits(self, states, values: torch.Tensor, correct_only: bool = True) -> torch.Tensor:
        """Label logits with concept k of row i set to ``values[i, k]`` (``MISSING``: as predicted;
        ``correct_only``: as in ``intervened_activations``)."""
        return self.label_from_concepts(self.intervened_activations(states, values, correct_only))

    def concept_contribution_matrix(self, activations: list[torch.Tensor], label_rows: torch.Tensor) -> torch.Tensor:
        """``[B, K]``: each concept's contribution to the logit of ``label_rows[i]``."""
        raise NotImplementedError

    def concept_contributions(self, output: ModelOutput, prediction: Prediction) -> list:
        raise NotImplementedError


class SubnetworkModel(ConceptModel):
    """A concept model whose concepts each read their own sparse subnetwork of the backbone
    (docs/methods.md §2): ``subnetwork_statistics``, ``mask_density``, and ``SubnetworkRewiring``
    corrections."""

    def subnetwork_statistics(self) -> dict:
        raise NotImplementedError

    def mask_density(self) -> dict[str, float]:
        raise NotImplementedError


class PrototypeModel(LucidModel):
    """A model whose label reads similarities to learned prototypes (docs/methods.md §3), each shown by
    its nearest training examples (``projection``)."""

    projection = None
