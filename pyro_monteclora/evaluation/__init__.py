"""Evaluation of a trained model: metrics, likelihood-based and generation-based evaluation of
decoders, the statistics of a sweep, and their figures.

* :mod:`~pyro_monteclora.evaluation.metrics` -- Classification metrics of a predictive distribution:
  accuracy, NLL, ECE, Brier, AUROC.
* :mod:`~pyro_monteclora.evaluation.language_model` -- Evaluating a causal language model by its
  likelihoods under the posterior predictive.
* :mod:`~pyro_monteclora.evaluation.generation` -- Generation with posterior sampling, answer
  extraction and agreement as confidence.
* :mod:`~pyro_monteclora.evaluation.evaluators` -- Evaluators for
  :func:`~pyro_monteclora.training.svi.fit`: what it measures after every epoch.
* :mod:`~pyro_monteclora.evaluation.sweep` -- Hyper-parameter sweeps and the spread of their results
  (the paper's robustness study).
* :mod:`~pyro_monteclora.evaluation.plots` -- Figures of a predictive distribution's calibration and
  of a sweep's spread.

It imports :mod:`pyro_monteclora.infer`, :mod:`pyro_monteclora.nn`, :mod:`pyro_monteclora.data`,
:mod:`pyro_monteclora.storage` and the leaves.

Every public name of these modules is importable from ``pyro_monteclora.evaluation``.
"""

from pyro_monteclora.evaluation.evaluators import (
    ClassificationEvaluator,
    Evaluator,
    LanguageModelEvaluator,
    evaluator_for,
)
from pyro_monteclora.evaluation.generation import (
    ANSWER_TYPES,
    GenerationResult,
    extract_answer,
    final_number,
    generate_answers,
    is_correct,
    majority_vote,
    normalize_answer,
)
from pyro_monteclora.evaluation.language_model import language_model_metrics, predict_multiple_choice
from pyro_monteclora.evaluation.metrics import (
    accuracy,
    auroc,
    brier_score,
    classification_metrics,
    confidence_metrics,
    confidence_reliability_curve,
    curve_ece,
    expected_calibration_error,
    matthews_correlation,
    negative_log_likelihood,
    reliability_curve,
)
from pyro_monteclora.evaluation.plots import plot_reliability_diagram, plot_sweep_boxes
from pyro_monteclora.evaluation.sweep import (
    LOWER_IS_BETTER,
    STATISTICS,
    SweepCell,
    summarize,
    summary_markdown,
    sweep_grid,
)

__all__ = [
    "accuracy",
    "negative_log_likelihood",
    "expected_calibration_error",
    "brier_score",
    "auroc",
    "matthews_correlation",
    "reliability_curve",
    "curve_ece",
    "confidence_reliability_curve",
    "confidence_metrics",
    "classification_metrics",
    "language_model_metrics",
    "predict_multiple_choice",
    "GenerationResult",
    "generate_answers",
    "extract_answer",
    "normalize_answer",
    "final_number",
    "majority_vote",
    "is_correct",
    "ANSWER_TYPES",
    "Evaluator",
    "ClassificationEvaluator",
    "LanguageModelEvaluator",
    "evaluator_for",
    "SweepCell",
    "sweep_grid",
    "summarize",
    "summary_markdown",
    "LOWER_IS_BETTER",
    "STATISTICS",
    "plot_reliability_diagram",
    "plot_sweep_boxes",
]
