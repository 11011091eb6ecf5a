from .base import LucidModel, ModelConfig, load_pretrained
from .bottleneck import MODES, BottleneckConfig, ConceptBottleneckLM
from .subnetworks import SparseConceptLM, SparseConfig
from .prototypes import PrototypeConfig, PrototypeLM, PrototypeProjection

__all__ = ["LucidModel", "ModelConfig", "load_pretrained", "MODES", "BottleneckConfig", "ConceptBottleneckLM", "SparseConceptLM", "SparseConfig"]
__all__ += ["PrototypeConfig", "PrototypeLM", "PrototypeProjection"]
