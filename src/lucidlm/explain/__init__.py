from .explanation import ConceptContribution, Explanation, PrototypeMatch, TokenAttribution, TrainingExample

__all__ = ["ConceptContribution", "Explanation", "PrototypeMatch", "TokenAttribution", "TrainingExample"]
