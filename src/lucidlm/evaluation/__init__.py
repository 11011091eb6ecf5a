from .metrics import classification_metrics, concept_metrics, regression_metrics, selection_score, task_metrics

__all__ = ["classification_metrics", "concept_metrics", "regression_metrics", "selection_score", "task_metrics"]
