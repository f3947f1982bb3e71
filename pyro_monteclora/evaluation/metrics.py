"""Classification metrics of a predictive distribution: accuracy, NLL, ECE, Brier, AUROC.

All metrics are fractions (not percent) and take ``probs`` of shape ``(n, classes)`` and integer
``labels`` of shape ``(n,)``.

>>> import torch
>>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
>>> labels = torch.tensor([0, 1, 1])
>>> round(accuracy(probs, labels), 4), round(expected_calibration_error(probs, labels, bins=2), 4)
(0.6667, 0.1)
"""

from __future__ import annotations

from typing import Dict

import torch

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
    "pass_at_k",
]


def _check(probs: torch.Tensor, labels: torch.Tensor) -> None:
    if probs.dim() != 2 or labels.dim() != 1 or probs.shape[0] != labels.shape[0]:
        raise ValueError(
            f"probs must be (n, classes) and labels (n,), got {tuple(probs.shape)} and {tuple(labels.shape)}"
        )
    if probs.shape[0] == 0:
        raise ValueError("metrics need at least one example")


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of examples whose arg-max class is the label."""
    _check(probs, labels)
    return (probs.argmax(-1) == labels).double().mean().item()


def negative_log_likelihood(probs: torch.Tensor, labels: torch.Tensor, eps: float = 1e-12) -> float:
    """:math:`-\\frac1n \\sum_i \\log p_i(y_i)` (nats), with probabilities clamped at ``eps``."""
    _check(probs, labels)
    picked = probs.double().gather(-1, labels.long()[:, None]).squeeze(-1)
    return (-picked.clamp_min(eps).log()).mean().item()


def brier_score(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score :math:`\\frac1n \\sum_i \\lVert p_i - e_{y_i} \\rVert^2` (in ``[0, 2]``)."""
    _check(probs, labels)
    onehot = torch.nn.functional.one_hot(labels.long(), probs.shape[-1]).double()
    return (probs.double() - onehot).pow(2).sum(-1).mean().item()


def reliability_curve(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> Dict[str, list]:
    """Per confidence bin (equal width on ``[0, 1]``): count, mean confidence, accuracy.

    Bin ``b`` holds the examples with confidence in :math:`((b-1)/B, b/B]` (the first bin also
    takes 0). Empty bins report ``None`` for confidence and accuracy.
    """
    _check(probs, labels)
    confidence, predicted = probs.double().max(-1)
    return confidence_reliability_curve(confidence, predicted == labels, bins)


def confidence_reliability_curve(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> Dict[str, list]:
    """:func:`reliability_curve` for any confidence in ``[0, 1]`` attached to a right/wrong
    outcome (for example the agreement rate of sampled generations)."""
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
        raise ValueError(f"bins must be an integer >= 1, got {bins!r}")
    confidence, correct = confidence.double().flatten(), correct.double().flatten()
    if confidence.shape != correct.shape or confidence.numel() == 0:
        raise ValueError(
            f"confidence and correct must be non-empty and of one length, got "
            f"{tuple(confidence.shape)} and {tuple(correct.shape)}"
        )
    index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    counts, conf, acc = [], [], []
    for b in range(bins):
        members = index == b
        n = int(members.sum())
        counts.append(n)
        conf.append(confidence[members].mean().item() if n else None)
        acc.append(correct[members].mean().item() if n else None)
    edges = [b / bins for b in range(bins + 1)]
    return {"edges": edges, "count": counts, "confidence": conf, "accuracy": acc}


def curve_ece(curve: Dict[str, list]) -> float:
    """ECE of a reliability curve (:func:`reliability_curve`'s output),
    :math:`\\sum_b \\frac{n_b}{n} \\lvert \\operatorname{acc}_b - \\operatorname{conf}_b \\rvert`.

    >>> round(curve_ece({"count": [3, 1], "accuracy": [1.0, 0.0], "confidence": [0.9, 0.6]}), 6)
    0.225
    """
    n = sum(curve["count"])
    return sum(
        count / n * abs(a - c) for count, a, c in zip(curve["count"], curve["accuracy"], curve["confidence"]) if count
    )


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """:math:`\\sum_b \\frac{|B_b|}{n} \\lvert \\operatorname{acc}(B_b) - \\operatorname{conf}(B_b) \\rvert`."""
    return curve_ece(reliability_curve(probs, labels, bins))


def confidence_metrics(confidence: torch.Tensor, correct: torch.Tensor, bins: int = 15) -> Dict[str, float]:
    """How well a confidence in ``[0, 1]`` predicts being right: ``accuracy`` (fraction right),
    ``mean_confidence``, ``ece``, ``brier`` (:math:`\\frac1n\\sum_i (c_i - [\\text{right}_i])^2`, in
    ``[0, 1]``) and ``auroc`` (of the confidence for telling right from wrong; ``nan`` if all
    are right or all wrong).

    >>> m = confidence_metrics(torch.tensor([1.0, 0.5, 0.5, 1.0]), torch.tensor([True, False, True, True]))
    >>> m["accuracy"], m["brier"], round(m["ece"], 4), m["auroc"]
    (0.75, 0.125, 0.0, 0.8333333333333334)
    """
    curve = confidence_reliability_curve(confidence, correct, bins)
    confidence, right = confidence.double().flatten(), correct.double().flatten()
    return {
        "accuracy": right.mean().item(),
        "mean_confidence": confidence.mean().item(),
        "ece": curve_ece(curve),
        "brier": (confidence - right).pow(2).mean().item(),
        "auroc": auroc(confidence, correct.bool()),
    }


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positives`` (bool) from the rest.

    Computed as the Mann-Whitney statistic with ties counted one half; ``nan`` when one class is
    empty. Used with ``scores`` = predictive entropy and ``positives`` = misclassified.
    """
    scores = scores.double().flatten()
    positives = positives.bool().flatten()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.argsort()
    sorted_scores = scores[order]
    # rank 1..n in sorted order, tied scores sharing their average rank
    unique, inverse, counts = torch.unique(sorted_scores, return_inverse=True, return_counts=True)
    rank_sum = torch.zeros(len(unique), dtype=torch.float64).index_add_(
        0, inverse, torch.arange(1, len(scores) + 1, dtype=torch.float64)
    )
    ranks = torch.empty_like(scores)
    ranks[order] = (rank_sum / counts)[inverse]
    u = ranks[positives].sum() - n_pos * (n_pos + 1) / 2
    return (u / (n_pos * n_neg)).item()


def matthews_correlation(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Matthews correlation of the arg-max predictions (CoLA's metric), in ``[-1, 1]``.

    For :math:`K` classes (Gorodkin's :math:`R_K`), with :math:`c` correct of :math:`n`, and
    :math:`p_k`, :math:`t_k` the predicted and true counts of class :math:`k`:

    .. math::

        \\mathrm{MCC} = \\frac{c\\,n - \\sum_k p_k t_k}
                               {\\sqrt{(n^2 - \\sum_k p_k^2)(n^2 - \\sum_k t_k^2)}},

    and 0 when a factor of the denominator is 0 (a constant prediction or label).

    >>> probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    >>> round(matthews_correlation(probs, torch.tensor([0, 1, 1, 1])), 4)
    0.5774
    """
    _check(probs, labels)
    classes = probs.shape[-1]
    predicted = probs.argmax(-1)
    n = float(labels.numel())
    correct = (predicted == labels).double().sum()
    p = torch.bincount(predicted, minlength=classes).double()
    t = torch.bincount(labels.long(), minlength=classes).double()
    denominator = ((n * n - (p * p).sum()) * (n * n - (t * t).sum())).sqrt()
    if denominator.item() == 0:
        return 0.0
    return ((correct * n - (p * t).sum()) / denominator).item()


def classification_metrics(
    probs: torch.Tensor, labels: torch.Tensor, bins: int = 15, uncertainty: torch.Tensor = None
) -> Dict[str, float]:
    """Accuracy, NLL, ECE, Brier, Matthews correlation and (with ``uncertainty``) the AUROC of
    spotting errors."""
    result = {
        "accuracy": accuracy(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
        "ece": expected_calibration_error(probs, labels, bins),
        "brier": brier_score(probs, labels),
        "matthews_correlation": matthews_correlation(probs, labels),
    }
    if uncertainty is not None:
        result["error_auroc"] = auroc(uncertainty, probs.argmax(-1) != labels)
    return result


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """The unbiased estimator of pass@k (Chen et al. 2021, *Evaluating Large Language Models
    Trained on Code*): the probability that at least one of :math:`k` completions drawn without
    replacement from :math:`n` generated, of which :math:`c` pass, passes,

    .. math::

        \\widehat{\\text{pass@}k} = 1 - \\binom{n - c}{k} \\Big/ \\binom{n}{k}
        = 1 - \\prod_{i = n - c + 1}^{n} \\left(1 - \\frac{k}{i}\\right),

    the product form avoiding large binomials; 1 when :math:`n - c < k`.

    >>> pass_at_k(4, 1, 1), pass_at_k(4, 1, 2), round(pass_at_k(4, 2, 2), 4)
    (0.25, 0.5, 0.8333)
    """
    for name, value in (("num_samples", num_samples), ("num_correct", num_correct), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"pass_at_k(): {name} must be an integer >= 0, got {value!r}")
    if not 1 <= k <= num_samples:
        raise ValueError(f"pass_at_k(): k must be between 1 and the number of samples {num_samples}, got {k}")
    if num_correct > num_samples:
        raise ValueError(f"pass_at_k(): num_correct {num_correct} exceeds num_samples {num_samples}")
    if num_samples - num_correct < k:
        return 1.0
    product = 1.0
    for i in range(num_samples - num_correct + 1, num_samples + 1):
        product *= 1.0 - k / i
    return 1.0 - product
