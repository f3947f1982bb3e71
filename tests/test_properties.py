"""Property-based tests (hypothesis) for the metrics and the Wishart sampler, and the Bartlett
sampler's validity over a million draws."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_monteclora.distributions import WishartCholesky
from pyro_monteclora.metrics import (accuracy, brier_score, expected_calibration_error,
                                     negative_log_likelihood)

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def predictions(draw):
    """Probabilities (softmax of arbitrary finite logits, some very peaked) and labels."""
    n = draw(st.integers(1, 40))
    k = draw(st.integers(2, 5))
    logits = draw(st.lists(st.floats(-30, 30, allow_nan=False), min_size=n * k, max_size=n * k))
    labels = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    probs = torch.tensor(logits, dtype=torch.float64).reshape(n, k).softmax(-1)
    return probs, torch.tensor(labels)


@SETTINGS
@given(predictions(), st.integers(1, 30))
def test_metric_ranges(data, bins):
    probs, labels = data
    assert 0.0 <= expected_calibration_error(probs, labels, bins) <= 1.0
    assert 0.0 <= brier_score(probs, labels) <= 2.0
    assert negative_log_likelihood(probs, labels) >= 0.0
    assert 0.0 <= accuracy(probs, labels) <= 1.0


@SETTINGS
@given(predictions(), st.randoms(use_true_random=False))
def test_metrics_do_not_depend_on_the_order_of_examples(data, rng):
    probs, labels = data
    order = list(range(len(labels)))
    rng.shuffle(order)
    index = torch.tensor(order)
    for metric in (accuracy, brier_score, negative_log_likelihood, expected_calibration_error):
        assert metric(probs[index], labels[index]) == pytest.approx(metric(probs, labels), abs=1e-12)


@SETTINGS
@given(st.integers(1, 6), st.floats(0.0, 5.0), st.lists(st.floats(-3, 3), min_size=6, max_size=6),
       st.integers(0, 2**31 - 1))
def test_wishart_cholesky_draws_are_valid_factors_with_finite_density(rank, extra_df, log_scale, seed):
    df = rank - 1 + 1e-3 + extra_df
    torch.manual_seed(seed)
    distribution = WishartCholesky.from_log_diagonal(df, torch.tensor(log_scale[:rank]))
    value = distribution.rsample((8,))
    assert value.shape == (8, rank, rank)
    assert torch.equal(value, value.tril())
    assert bool((value.diagonal(dim1=-2, dim2=-1) > 0).all())
    assert bool(torch.isfinite(distribution.log_prob(value)).all())


@pytest.mark.parametrize("rank", [4, 8])
def test_a_million_bartlett_draws_at_df_equal_rank_are_all_valid(rank):
    torch.manual_seed(0)
    distribution = WishartCholesky.from_log_diagonal(float(rank), torch.zeros(rank))
    for _ in range(4):  # 4 x 250,000 draws
        value = distribution.rsample((250_000,))
        diagonal = value.diagonal(dim1=-2, dim2=-1)
        assert bool(torch.isfinite(value).all())
        assert bool((diagonal > 0).all()), diagonal.min()
        # E[L_jj^2] = df - j for the identity scale (chi-square with df - j degrees of freedom)
        expected = torch.tensor([rank - j for j in range(rank)], dtype=value.dtype)
        assert torch.allclose(diagonal.pow(2).mean(0), expected, rtol=0.02)
    assert math.isfinite(distribution.log_prob(value[:1000]).sum().item())
