from .explanation import (
    ConceptContribution,
    Explanation,
    PrototypeMatch,
    TokenAttribution,
    TrainingExample,
    concept_values_share,
)

__all__ = [
    "ConceptContribution",
    "Explanation",
    "PrototypeMatch",
    "TokenAttribution",
    "TrainingExample",
    "concept_values_share",
]
