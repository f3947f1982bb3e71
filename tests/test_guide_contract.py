"""Every guide trains the same model through the same ``fit``: the structured guide, Pyro's own
``AutoNormal``, BLoB's mean-field guide (with the Gaussian prior) and the LoRA mode (a model with
mean adapters and an empty guide), parametrised over guides as Pyro's own tests are; and the one
prior object both sides of the ELBO read."""

import pyro
import pytest
import torch
from conftest import classification_batch, tiny_bert_classifier, without_labels
from pyro import poutine
from pyro.infer import Predictive, TraceMeanField_ELBO
from pyro.infer.autoguide import AutoNormal
from test_train import loaders
from torch.distributions import biject_to, constraints

from pyro_monteclora import (
    EmptyGuide,
    GaussianPrior,
    LowerCholeskyBijection,
    MeanFieldGuide,
    MonteCLoRAConfig,
    MonteCLoRAELBO,
    MonteCLoRAGuide,
    MonteCLoRAModel,
    predict,
)
from pyro_monteclora.training.svi import fit

#: kind -> (adapter mode, guide class, the config fields the guide needs). The Gaussian prior also
#: pulls M towards 0 (its KL has M^2 / 2 sigma_p^2 per entry): at kl_weight 1 with 256 examples
#: that pull wins over the data in six epochs (accuracy 0.66), so this tiny task weighs it 0.02.
GUIDES = {
    "structured": ("sample", MonteCLoRAGuide, {}),
    "autonormal": ("sample", AutoNormal, {}),
    # the stacked site layout: one site per kind for all layers of one width (nn.sites)
    "structured-stacked": ("sample", MonteCLoRAGuide, {"site_layout": "stacked"}),
    "autonormal-stacked": ("sample", AutoNormal, {"site_layout": "stacked"}),
    "mean-field": ("sample", MeanFieldGuide, {"prior": "gaussian", "kl_weight": 0.02}),
    "lora": ("mean", EmptyGuide, {}),
}


def make(kind, **config):
    adapter_mode, build, needed = GUIDES[kind]
    config = {"rank": 4, "modules_to_save": ["classifier"], "sample_scaler": 0.05, **needed, **config}
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**config), adapter_mode=adapter_mode)
    return model, build(model)


@pytest.mark.parametrize("kind", sorted(GUIDES))
def test_every_guide_trains_through_fit_and_predicts(kind):
    model, guide = make(kind)
    train, test = loaders()
    means_before = {n: p.detach().clone() for n, p in model.trainable_parameters()}
    result = fit(
        model, guide, train, epochs=6, learning_rate=5e-3, seed=0, progress=False, eval_loader=test, eval_num_samples=4
    )
    losses = [epoch["loss"] for epoch in result.epochs]
    assert losses[-1] < losses[0] - 0.1, losses
    assert result.epochs[-1]["accuracy"] > 0.9
    # the model's point estimates moved; the guide's variational parameters moved too (if any)
    assert all(not torch.equal(p, means_before[n]) for n, p in model.trainable_parameters())
    guide_parameters = list(guide.parameters())
    assert (len(guide_parameters) == 0) == (kind == "lora")
    batch = next(iter(test))
    pyro.set_rng_seed(1)
    probs = predict(model, guide, [batch], num_samples=3).probs
    torch.testing.assert_close(probs.sum(-1), torch.ones(len(probs)))
    # Pyro's own predictive returns label draws from the model's obs site
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    draws = Predictive(model, guide=guide, num_samples=3, return_sites=["obs"])(**inputs)["obs"]
    assert draws.shape == (3, len(batch["labels"]))
    # the model never learned about its guide, and a guide never rewired its model
    assert not hasattr(model, "guide")
    assert model.adapter_mode == GUIDES[kind][0]


def test_autonormal_needs_the_lower_cholesky_bijection():
    """Autoguides transform each site from an unconstrained space: the covariance site's support
    (lower_cholesky) must have a registered bijection, and it must be one."""
    transform = biject_to(constraints.lower_cholesky)
    assert isinstance(transform, LowerCholeskyBijection)
    x = torch.randn(6, dtype=torch.float64, requires_grad=True)
    L = transform(x)
    assert L.shape == (3, 3) and torch.equal(L, L.tril()) and bool((L.diagonal() > 0).all())
    torch.testing.assert_close(transform.inv(L), x)
    # log|det J| against autograd's Jacobian restricted to the lower triangle
    rows, cols = torch.tril_indices(3, 3)
    jacobian = torch.autograd.functional.jacobian(lambda v: transform(v)[rows, cols], x)
    torch.testing.assert_close(transform.log_abs_det_jacobian(x, L), torch.linalg.slogdet(jacobian)[1])
    assert transform.forward_shape((5, 6)) == (5, 3, 3) and transform.inverse_shape((5, 3, 3)) == (5, 6)


def test_model_layers_and_guide_share_one_prior_object():
    model, guide = make("structured", wishart_df=5.5, dirichlet_concentration=0.4)
    assert all(adapter.prior is model.prior for adapter in model.adapters().values())
    assert guide.prior is model.prior
    assert model.prior.wishart_df == 5.5 and model.prior.dirichlet_concentration == 0.4
    model, guide = make("mean-field", prior_std=0.3)
    assert isinstance(model.prior, GaussianPrior) and model.prior.std == 0.3
    assert all(adapter.prior is model.prior for adapter in model.adapters().values())
    assert guide.prior is model.prior


def test_batched_kl_and_pyro_elbo_agree_for_a_non_default_prior():
    """The batched KL (the guide) and Pyro's per-site KLs (the model's sites) read one prior: with
    a prior far from the defaults they give the same ELBO on the same draws."""
    model, guide = make("structured", rank=3, wishart_df=6.0, dirichlet_concentration=0.3, kl_weight=0.6)
    with torch.no_grad():
        for posterior in guide.factor_posteriors().values():
            posterior.log_scale.normal_(std=0.3)
    batch = classification_batch()
    pyro.set_rng_seed(4)
    ours = MonteCLoRAELBO().differentiable_loss(model, guide, dataset_size=80, **batch)
    pyro.set_rng_seed(4)
    reference = TraceMeanField_ELBO().differentiable_loss(model, guide, dataset_size=80, **batch)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)
    # and the KL alone differs from the default prior's: the prior really was used
    blocked = poutine.block(model, hide=["obs"])
    kl = TraceMeanField_ELBO().differentiable_loss(blocked, guide, **without_labels(batch))
    default_model, default_guide = make("structured", rank=3, kl_weight=0.6)
    default_guide.load_state_dict(guide.state_dict())
    default_kl = TraceMeanField_ELBO().differentiable_loss(
        poutine.block(default_model, hide=["obs"]), default_guide, **without_labels(batch)
    )
    assert abs(kl.item() - default_kl.item()) > 1.0
