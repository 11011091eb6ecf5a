"""lucidlm: language-model classifiers that are interpretable by construction."""

__version__ = "0.1.0"

from .data import ConceptSpec, Split, Task, TaskSpec, load_task  # noqa: E402
from .errors import LucidError  # noqa: E402
from .models import BottleneckConfig, ConceptBottleneckLM, SparseConceptLM, SparseConfig, load_pretrained  # noqa: E402
from .models import PrototypeConfig, PrototypeLM  # noqa: E402
from .outputs import InterventionResult, ModelOutput, Prediction  # noqa: E402
from .training import TrainingConfig  # noqa: E402

__all__ = [
    "ConceptSpec", "Split", "Task", "TaskSpec", "load_task", "LucidError", "BottleneckConfig",
    "ConceptBottleneckLM", "SparseConceptLM", "SparseConfig", "load_pretrained", "InterventionResult", "ModelOutput", "Prediction", "TrainingConfig",
    "PrototypeConfig", "PrototypeLM",
]
