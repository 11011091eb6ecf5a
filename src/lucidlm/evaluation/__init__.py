from ..metrics import classification_metrics, concept_metrics, regression_metrics, selection_score, task_metrics
from .suite import SUITES, parse_suites, plot_intervention_curves, render_markdown, run_suite, write_report

__all__ = ["classification_metrics", "concept_metrics", "regression_metrics", "selection_score", "task_metrics"]
__all__ += ["SUITES", "parse_suites", "plot_intervention_curves", "render_markdown", "run_suite", "write_report"]
