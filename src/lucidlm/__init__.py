"""lucidlm: language-model classifiers that are interpretable by construction."""

from .data import ConceptSpec, Split, Task, TaskSpec, load_task  # noqa: E402
from .errors import LucidError  # noqa: E402
from .intervene import ConceptValues, SubnetworkRewiring  # noqa: E402
from .models import (  # noqa: E402  # noqa: E402
    BottleneckConfig,
    ConceptBottleneckLM,
    PrototypeConfig,
    PrototypeLM,
    SparseConceptLM,
    SparseConfig,
    StandardConfig,
    StandardLM,
    load_pretrained,
)
from .outputs import InterventionResult, ModelOutput, Prediction  # noqa: E402
from .training import TrainingConfig  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "__version__",
    "ConceptSpec",
    "Split",
    "Task",
    "TaskSpec",
    "load_task",
    "LucidError",
    "BottleneckConfig",
    "ConceptBottleneckLM",
    "SparseConceptLM",
    "SparseConfig",
    "load_pretrained",
    "InterventionResult",
    "ModelOutput",
    "Prediction",
    "TrainingConfig",
    "PrototypeConfig",
    "PrototypeLM",
    "StandardConfig",
    "StandardLM",
    "ConceptValues",
    "SubnetworkRewiring",
]
