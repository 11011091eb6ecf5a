from .base import LucidModel, ModelConfig, load_pretrained
from .bottleneck import MODES, BottleneckConfig, ConceptBottleneckLM

__all__ = ["LucidModel", "ModelConfig", "load_pretrained", "MODES", "BottleneckConfig", "ConceptBottleneckLM"]
