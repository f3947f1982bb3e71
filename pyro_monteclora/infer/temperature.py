"""Temperature scaling (Guo et al., 2017): one scalar :math:`T`, fitted on held-out data, that
makes any predictive less (or more) confident without changing a single prediction.

For a predictive :math:`\\bar p(y \\mid x)` (one network's softmax, an ensemble's average or a
posterior predictive) the tempered predictive is

.. math::

    p_T(y \\mid x) = \\frac{\\bar p(y \\mid x)^{1/T}}{\\sum_{y'} \\bar p(y' \\mid x)^{1/T}}
    = \\operatorname{softmax}\\big(\\log \\bar p(\\cdot \\mid x) / T\\big)_y,

which for a single network is the usual ``softmax(logits / T)``; pooled predictives are tempered
after pooling. :math:`T` minimises the negative log-likelihood on the validation split (never the
test split). The NLL is convex in :math:`\\beta = 1/T` (a log-sum-exp of functions linear in
:math:`\\beta`, minus a linear function), so a golden-section search over
:math:`\\log T \\in [\\log T_{min}, \\log T_{max}]` finds the minimum to ``tolerance``.

The arg-max of every row is kept (:math:`x \\mapsto x^{1/T}` is increasing), so accuracy does
not move; :math:`T = 1` is the identity.

>>> import torch
>>> probs = torch.tensor([[0.99, 0.01], [0.98, 0.02], [0.97, 0.03], [0.2, 0.8]])
>>> labels = torch.tensor([0, 1, 0, 1])  # confident and once wrong: T > 1 softens
>>> T = fit_temperature(probs, labels)
>>> T > 1.0, bool((temper(probs, T).argmax(-1) == probs.argmax(-1)).all())
(True, True)
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from pyro_monteclora.infer.predictive import PredictiveOutput, entropy

__all__ = ["fit_temperature", "temper", "temper_output", "tempered_nll"]

#: the golden ratio's conjugate, for the section search
_INVERSE_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _log_probs(probs: torch.Tensor) -> torch.Tensor:
    probs = probs.double()
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def _check(probs: torch.Tensor, labels: torch.Tensor) -> None:
    if probs.dim() != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty (n, classes) tensor, got shape {tuple(probs.shape)}")
    if labels.shape != probs.shape[:1]:
        raise ValueError(f"labels must have shape ({probs.shape[0]},), got {tuple(labels.shape)}")


def tempered_nll(probs: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """Mean negative log-likelihood of :math:`p_T` (see the module's docstring)."""
    _check(probs, labels)
    log_p = torch.log_softmax(_log_probs(probs) / temperature, dim=-1)
    return float(-log_p.gather(-1, labels.long().view(-1, 1)).mean())


def fit_temperature(
    probs: torch.Tensor,
    labels: torch.Tensor,
    minimum: float = 0.05,
    maximum: float = 20.0,
    tolerance: float = 1e-4,
) -> float:
    """The :math:`T \\in [` ``minimum``, ``maximum`` :math:`]` that minimises the NLL of
    :math:`p_T` on ``(probs, labels)``: the validation split's predictive and labels.

    :param probs: ``(n, classes)`` predictive probabilities.
    :param labels: ``(n,)`` class indices.
    :param float tolerance: on :math:`\\log T`.
    """
    _check(probs, labels)
    if not (0 < minimum < 1 < maximum):
        raise ValueError(f"the temperature range must hold 1 inside (0, inf), got [{minimum}, {maximum}]")
    log_p = _log_probs(probs)
    index = labels.long().view(-1, 1)

    def nll(log_t: float) -> float:
        return float(-torch.log_softmax(log_p / math.exp(log_t), dim=-1).gather(-1, index).mean())

    low, high = math.log(minimum), math.log(maximum)
    left, right = high - _INVERSE_GOLDEN * (high - low), low + _INVERSE_GOLDEN * (high - low)
    f_left, f_right = nll(left), nll(right)
    while high - low > tolerance:
        if f_left <= f_right:
            high, right, f_right = right, left, f_left
            left = high - _INVERSE_GOLDEN * (high - low)
            f_left = nll(left)
        else:
            low, left, f_left = left, right, f_right
            right = low + _INVERSE_GOLDEN * (high - low)
            f_right = nll(right)
    best = (low + high) / 2.0
    # the search brackets a minimum of a convex function; keep T = 1 when it is (numerically) as good
    return 1.0 if nll(0.0) <= nll(best) else math.exp(best)


def temper(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """:math:`p_T`: ``softmax(log(probs) / temperature)`` row by row, in ``probs``' dtype."""
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if temperature == 1.0:
        return probs.clone()
    return torch.softmax(_log_probs(probs) / temperature, dim=-1).to(probs.dtype)


def temper_output(output: PredictiveOutput, temperature: float) -> PredictiveOutput:
    """``output`` with tempered probabilities and their predictive entropy.

    Tempering acts on the pooled predictive, so the draws' own entropies are gone; the mutual
    information (the draws' disagreement) is kept as it was measured, and the expected entropy
    is set to ``predictive entropy - mutual information`` (at least 0), so the two still add up.
    """
    probs = temper(output.probs, temperature)
    predictive_entropy = entropy(probs.double()).float()
    expected = (predictive_entropy - output.mutual_information).clamp_min(0.0)
    return replace(output, probs=probs, predictive_entropy=predictive_entropy, expected_entropy=expected)
