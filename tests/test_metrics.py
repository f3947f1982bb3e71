"""Metrics against values computed by hand."""

import math

import pytest
import torch

from pyro_monteclora.evaluation.metrics import (
    accuracy,
    auroc,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    negative_log_likelihood,
    reliability_curve,
)

PROBS = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
LABELS = torch.tensor([0, 1, 1, 1])


def test_accuracy_nll_brier_by_hand():
    assert accuracy(PROBS, LABELS) == pytest.approx(0.75)
    expected_nll = -(math.log(0.9) + math.log(0.8) + math.log(0.4) + math.log(0.7)) / 4
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(expected_nll)
    expected_brier = (2 * 0.1**2 + 2 * 0.2**2 + 2 * 0.6**2 + 2 * 0.3**2) / 4
    assert brier_score(PROBS, LABELS) == pytest.approx(expected_brier)


def test_ece_by_hand():
    # confidences 0.9 (right), 0.8 (right), 0.6 (wrong), 0.7 (right); bins of width 0.5 and 0.25
    assert expected_calibration_error(PROBS, LABELS, bins=2) == pytest.approx(abs(0.75 - 0.75))
    # bins (0.5, 0.75]: {0.6 wrong, 0.7 right} -> |0.5 - 0.65|; (0.75, 1]: {0.9, 0.8} -> |1 - 0.85|
    assert expected_calibration_error(PROBS, LABELS, bins=4) == pytest.approx(0.5 * 0.15 + 0.5 * 0.15)
    curve = reliability_curve(PROBS, LABELS, bins=4)
    assert curve["count"] == [0, 0, 2, 2] and curve["accuracy"][:2] == [None, None]


def test_auroc_by_hand_with_ties():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    positives = torch.tensor([False, False, True, True, True])
    # pairs (pos, neg): (0.35,0.1)=1 (0.35,0.4)=0 (0.8,*)=2 (0.4,0.1)=1 (0.4,0.4)=0.5 -> 4.5 / 6
    assert auroc(scores, positives) == pytest.approx(4.5 / 6)
    assert math.isnan(auroc(scores, torch.zeros(5, dtype=torch.bool)))


def test_perfect_and_uniform_predictions():
    labels = torch.tensor([0, 1, 2])
    perfect = torch.eye(3)
    m = classification_metrics(perfect, labels)
    assert m["accuracy"] == 1 and m["ece"] == pytest.approx(0) and m["brier"] == pytest.approx(0)
    uniform = torch.full((3, 3), 1 / 3)
    assert negative_log_likelihood(uniform, labels) == pytest.approx(math.log(3))


def test_bad_shapes_and_bins_are_rejected():
    with pytest.raises(ValueError, match="probs must be"):
        accuracy(torch.ones(3), LABELS)
    with pytest.raises(ValueError, match="bins"):
        reliability_curve(PROBS, LABELS, bins=0)
