"""The Bartlett Wishart, its KL and the LoRA perturbation, against closed forms and Monte Carlo."""

import math
import warnings

import pytest
import torch
from torch.distributions import Dirichlet, Wishart, kl_divergence

from pyro_monteclora.distributions import (
    StandardNormalMatrix,
    WishartCholesky,
    lora_perturbation,
    lora_perturbation_mixture,
    wishart_kl,
)


def random_scale_tril(rank, seed=0):
    g = torch.Generator().manual_seed(seed)
    tril = torch.randn(rank, rank, generator=g).tril(-1) * 0.5
    return tril + torch.diag(torch.rand(rank, generator=g) + 0.5)


@pytest.mark.parametrize("df_offset", [0.0, 2.5])
def test_bartlett_moments_match_closed_form(df_offset):
    torch.manual_seed(0)
    rank = 3
    df = rank + df_offset  # df = r is the case torch's Wishart warns about
    scale_tril = random_scale_tril(rank)
    V = scale_tril @ scale_tril.T
    n = 40_000
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L = WishartCholesky(df, scale_tril).rsample((n,))
    sigma = L @ L.mT
    mean = sigma.mean(0)
    var = sigma.var(0)
    expected_mean = df * V
    expected_var = df * (V**2 + torch.outer(V.diagonal(), V.diagonal()))
    # standard error of the mean of each element is sqrt(var / n)
    assert torch.all((mean - expected_mean).abs() < 5 * (expected_var / n).sqrt())
    # the sample variance of a Wishart element: allow 6% relative error at 40k draws
    assert torch.allclose(var, expected_var, rtol=0.06)


def test_samples_are_valid_cholesky_factors_at_df_equal_rank():
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L = WishartCholesky(8.0, torch.eye(8)).rsample((20_000,))
    assert torch.isfinite(L).all()
    assert (L.diagonal(dim1=-2, dim2=-1) > 0).all()
    assert (L.triu(1) == 0).all()


def test_log_prob_matches_torch_wishart():
    torch.manual_seed(2)
    rank = 4
    scale_tril = random_scale_tril(rank, seed=3)
    d = WishartCholesky(5.5, scale_tril)
    reference = Wishart(torch.tensor(5.5), scale_tril=scale_tril)
    L = d.rsample((16,))
    torch.testing.assert_close(d.matrix_log_prob(L), reference.log_prob(L @ L.mT), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        d.log_prob(L) - d.log_abs_det_jacobian(L), reference.log_prob(L @ L.mT), rtol=1e-4, atol=1e-4
    )


def test_jacobian_of_cholesky_map_matches_formula():
    rank = 3
    L = random_scale_tril(rank, seed=4).double()
    rows, cols = torch.tril_indices(rank, rank)

    def sigma_lower(entries):
        M = torch.zeros(rank, rank, dtype=entries.dtype)
        M[rows, cols] = entries
        return (M @ M.T)[rows, cols]

    jacobian = torch.autograd.functional.jacobian(sigma_lower, L[rows, cols])
    expected = WishartCholesky(3.0, torch.eye(rank, dtype=torch.float64)).log_abs_det_jacobian(L)
    assert math.isclose(torch.linalg.slogdet(jacobian).logabsdet.item(), expected.item(), rel_tol=1e-6)


@pytest.mark.parametrize("df_p,df_q", [(4.0, 4.0), (6.0, 4.0)])
def test_kl_closed_form_matches_monte_carlo(df_p, df_q):
    torch.manual_seed(5)
    rank = 4
    p = WishartCholesky(df_p, random_scale_tril(rank, seed=6))
    q = WishartCholesky(df_q, torch.eye(rank))
    L = p.rsample((50_000,))
    log_ratio = p.log_prob(L) - q.log_prob(L)
    mc, stderr = log_ratio.mean(), log_ratio.std() / math.sqrt(len(log_ratio))
    closed = kl_divergence(p, q)
    assert abs(closed - mc) < 5 * stderr
    assert closed > 0
    # the same KL is registered for torch's own Wishart
    torch_kl = kl_divergence(
        Wishart(torch.tensor(df_p), scale_tril=p.scale_tril), Wishart(torch.tensor(df_q), scale_tril=q.scale_tril)
    )
    torch.testing.assert_close(torch_kl, closed, rtol=1e-5, atol=1e-5)


def test_kl_is_zero_between_equal_distributions():
    S = random_scale_tril(5, seed=7)
    assert abs(wishart_kl(5.0, S, 5.0, S).item()) < 1e-5


def test_gradients_reach_the_log_scale():
    sigma = torch.zeros(4, requires_grad=True)
    d = WishartCholesky(4.0, torch.diag_embed(sigma.exp()))
    L = d.rsample((8,))
    (L @ L.mT).diagonal(dim1=-2, dim2=-1).sum().backward()
    assert sigma.grad is not None and torch.all(sigma.grad != 0)
    sigma.grad = None
    kl_divergence(
        WishartCholesky(4.0, torch.diag_embed(sigma.exp()) * 2), WishartCholesky(4.0, torch.eye(4))
    ).backward()
    assert torch.all(sigma.grad != 0)


def test_bad_degrees_of_freedom_are_rejected():
    with pytest.raises(ValueError, match="df"):
        WishartCholesky(2.0, torch.eye(4))
    with pytest.raises(ValueError, match="scale_tril"):
        WishartCholesky(4.0, torch.ones(3))


def test_standard_normal_matrix_matches_normal_and_has_zero_kl():
    d = StandardNormalMatrix(3, 5)
    z = d.rsample((4,))
    reference = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum((-2, -1))
    torch.testing.assert_close(d.log_prob(z), reference)
    assert kl_divergence(d, StandardNormalMatrix(3, 5)).item() == 0.0
    assert d.expand((2,)).rsample().shape == (2, 3, 5)


def test_single_noise_and_mixture_forms_agree_in_distribution():
    torch.manual_seed(8)
    rank, width, components, scaler, n = 3, 4, 4, 0.7, 60_000
    L = random_scale_tril(rank, seed=9)
    weights = Dirichlet(torch.ones(components)).sample()
    fast = lora_perturbation(L, weights, torch.randn(n, rank, width), scaler)
    paper = lora_perturbation_mixture(L, weights, torch.randn(n, components, rank, width), scaler)
    expected = scaler**2 * weights.pow(2).sum() * (L @ L.T)
    for sample in (fast, paper):
        columns = sample.transpose(-1, -2).reshape(-1, rank)
        torch.testing.assert_close(columns.mean(0), torch.zeros(rank), atol=0.02, rtol=0)
        covariance = columns.T @ columns / len(columns)
        torch.testing.assert_close(covariance, expected, atol=0.03 * expected.abs().max().item(), rtol=0)


def test_diagonal_fast_path_equals_the_general_form():
    sigma = torch.randn(2, 4) * 0.3
    fast = WishartCholesky.from_log_diagonal(5.0, sigma)
    general = WishartCholesky(5.0, torch.diag_embed(sigma.exp()))
    torch.manual_seed(11)
    a = fast.rsample((3,))
    torch.manual_seed(11)
    b = general.rsample((3,))
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(fast.log_prob(a), general.log_prob(a))
    prior_fast = WishartCholesky.from_log_diagonal(4.0, torch.zeros(4))
    prior_general = WishartCholesky(4.0, torch.eye(4))
    torch.testing.assert_close(kl_divergence(fast, prior_fast), kl_divergence(general, prior_general))
    torch.testing.assert_close(fast.scale_tril, general.scale_tril)
    assert fast.expand((5, 2)).rsample().shape == (5, 2, 4, 4)
    with pytest.raises(ValueError, match="exactly one"):
        WishartCholesky(4.0)


@pytest.fixture
def float64_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_samplers_follow_the_parameters_dtype_under_a_float64_default(float64_default, dtype):
    rank = 3
    scale_tril = random_scale_tril(rank, seed=14).to(dtype)
    full = WishartCholesky(4.0, scale_tril)
    diagonal = WishartCholesky.from_log_diagonal(4.0, scale_tril.diagonal().log())
    for d in (full, diagonal):
        L = d.rsample((5,))
        assert L.dtype == dtype and L.shape == (5, rank, rank)
        assert d.log_prob(L).dtype == dtype
        assert d.matrix_log_prob(L).dtype == dtype
        assert d.entropy().dtype == dtype
        assert kl_divergence(d, WishartCholesky(3.0, torch.eye(rank, dtype=dtype))).dtype == dtype
    weights = torch.full((4,), 0.25, dtype=dtype)
    noise = torch.randn(rank, 6, dtype=dtype)
    assert lora_perturbation(scale_tril, weights, noise, 0.1).dtype == dtype
    assert lora_perturbation_mixture(scale_tril, weights, noise.expand(4, rank, 6), 0.1).dtype == dtype
    assert StandardNormalMatrix(rank, 6).log_prob(noise).dtype == dtype


def test_a_full_scale_guide_runs_under_a_float64_default(float64_default):
    from conftest import classification_batch, tiny_bert_classifier

    from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
    from pyro_monteclora.infer.elbo import MonteCLoRAELBO

    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, modules_to_save=["classifier"]))
    guide = MonteCLoRAGuide(model, scale_tril="full")
    loss = MonteCLoRAELBO().differentiable_loss(model, guide, **classification_batch(), dataset_size=8)
    assert loss.dtype == torch.float64 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in guide.parameters())


@pytest.mark.parametrize("df, diagonal", [(4.0, False), (6.5, False), (4.0, True)])
def test_entropy_is_that_of_the_cholesky_factor_log_prob_describes(df, diagonal):
    # H(L) = -E[log p(L)] with log_prob's density of L (not the entropy of Sigma = L L^T)
    torch.manual_seed(12)
    rank, n = 4, 400_000
    scale_tril = random_scale_tril(rank, seed=13).double()
    if diagonal:
        d = WishartCholesky.from_log_diagonal(df, scale_tril.diagonal().log())
    else:
        d = WishartCholesky(df, scale_tril)
    log_prob = d.log_prob(d.rsample((n,)))
    assert log_prob.dtype == torch.float64
    monte_carlo, stderr = -log_prob.mean().item(), log_prob.std().item() / math.sqrt(n)
    assert stderr < 0.005
    assert abs(d.entropy().item() - monte_carlo) < 4 * stderr
    # and H(L) = H(Sigma) - E log|d Sigma / d L|, H(Sigma) being torch's Wishart entropy
    sigma_entropy = Wishart(torch.tensor(df, dtype=torch.float64), scale_tril=d.scale_tril).entropy()
    jacobian = d.log_abs_det_jacobian(d.rsample((n,)))
    assert abs((sigma_entropy - jacobian.mean() - d.entropy()).item()) < 4 * jacobian.std().item() / math.sqrt(n)


def _torch_wishart_kl(df_p, df_q, scale_p, scale_q):
    return kl_divergence(Wishart(df_p, scale_tril=scale_p), Wishart(df_q, scale_tril=scale_q))


def test_torch_wishart_kl_is_differentiable_in_a_learnable_df():
    rank = 3
    scale_p, scale_q = random_scale_tril(rank, seed=16).double(), random_scale_tril(rank, seed=17).double()
    df_p = torch.tensor(5.5, dtype=torch.float64, requires_grad=True)
    df_q = torch.tensor(3.5, dtype=torch.float64, requires_grad=True)
    kl = _torch_wishart_kl(df_p, df_q, scale_p, scale_q)
    kl.backward()
    assert df_p.grad is not None and df_q.grad is not None
    step = 1e-5
    for which, grad in (("p", df_p.grad), ("q", df_q.grad)):

        def at(shift):
            with torch.no_grad():
                p = df_p + (shift if which == "p" else 0.0)
                q = df_q + (shift if which == "q" else 0.0)
                return _torch_wishart_kl(p, q, scale_p, scale_q).item()

        finite_difference = (at(step) - at(-step)) / (2 * step)
        assert abs(finite_difference) > 0.1
        assert math.isclose(grad.item(), finite_difference, rel_tol=1e-6), which
    # the value is the number-df closed form
    assert math.isclose(kl.item(), wishart_kl(5.5, scale_p, 3.5, scale_q).item(), rel_tol=1e-12)


def test_torch_wishart_kl_takes_a_batch_of_dfs():
    rank = 3
    scales = torch.stack([random_scale_tril(rank, seed=s) for s in (18, 19)])
    kl = _torch_wishart_kl(torch.tensor([4.0, 6.0]), torch.tensor(3.0), scales, torch.eye(rank))
    expected = [wishart_kl(df, scale, 3.0, torch.eye(rank)) for df, scale in zip((4.0, 6.0), scales)]
    torch.testing.assert_close(kl, torch.stack(expected))


def test_a_df_that_requires_grad_is_refused_not_detached():
    with pytest.raises(ValueError, match="WishartCholesky.df must be a number .* requires grad"):
        WishartCholesky(torch.tensor(4.0, requires_grad=True), torch.eye(3))
    with pytest.raises(ValueError, match=r"wishart_kl df must be finite and > r - 1 = 2, got"):
        wishart_kl(torch.tensor(1.5), torch.eye(3), 4.0, torch.eye(3))


@pytest.mark.parametrize("elbo", ["monteclora", "meanfield"])
def test_kl_weight_and_cooperative_weight_enter_the_elbo_as_documented(elbo):
    # -ELBO = -(D/B) sum log p + lambda_t sum_l KL_l + w sum_l sum_k pi_lk^2 (docs/method.rst): the
    # KLs and the cooperative term once per factor, neither scaled by D/B; annealing scales only KL
    import pyro
    from conftest import classification_batch, tiny_bert_classifier
    from pyro import poutine
    from pyro.infer import TraceMeanField_ELBO

    from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, kl_scale
    from pyro_monteclora.infer.elbo import MonteCLoRAELBO

    batch, dataset_size = classification_batch(), 100
    estimator = MonteCLoRAELBO() if elbo == "monteclora" else TraceMeanField_ELBO()

    def negative_elbo(kl_weight, cooperative_weight, anneal=1.0):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = MonteCLoRAModel(
            tiny_bert_classifier(),
            MonteCLoRAConfig(
                rank=4, kl_weight=kl_weight, cooperative_weight=cooperative_weight, modules_to_save=["classifier"]
            ),
        )
        guide = MonteCLoRAGuide(model)
        pyro.set_rng_seed(1)
        guide_trace = poutine.trace(guide).get_trace()
        pyro.set_rng_seed(1)
        with kl_scale(anneal):
            loss = estimator.differentiable_loss(model, guide, **batch, dataset_size=dataset_size).item()
        cooperative = sum(
            site["value"].pow(2).sum().item()
            for name, site in guide_trace.nodes.items()
            if name.endswith(".mixture_weights")
        )
        return loss, guide.kl_divergence().item(), cooperative, len(model.adapters())

    plain, kl, cooperative, layers = negative_elbo(0.0, 0.0)
    assert layers == 4 and kl > 0 and cooperative > 0  # query and value of two BERT layers
    for kl_weight, cooperative_weight, anneal in [(1.0, 0.0, 1.0), (3.0, 2.0, 1.0), (2.0, 5.0, 0.25)]:
        loss, *_ = negative_elbo(kl_weight, cooperative_weight, anneal)
        expected = plain + anneal * kl_weight * kl + cooperative_weight * cooperative
        assert math.isclose(loss, expected, rel_tol=1e-5), (kl_weight, cooperative_weight, anneal)
