from .base import FAMILIES, ConceptModel, LucidModel, ModelConfig, PrototypeModel, SubnetworkModel, load_pretrained
from .bottleneck import MODES, BottleneckConfig, ConceptBottleneckLM
from .concept_layers import CONCEPT_LAYERS
from .prototypes import PrototypeConfig, PrototypeLM, PrototypeProjection
from .standard import StandardConfig, StandardLM
from .subnetworks import SparseConceptLM, SparseConfig

__all__ = [
    "FAMILIES",
    "ConceptModel",
    "LucidModel",
    "ModelConfig",
    "PrototypeModel",
    "SubnetworkModel",
    "load_pretrained",
]
__all__ += ["MODES", "BottleneckConfig", "ConceptBottleneckLM", "CONCEPT_LAYERS", "StandardConfig", "StandardLM"]
__all__ += ["SparseConceptLM", "SparseConfig", "PrototypeConfig", "PrototypeLM", "PrototypeProjection"]
