"""MonteCLoRAModel and MonteCLoRAGuide as Pyro objects: sites, the ELBO's KL, SVI, Predictive, isolation."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import classification_batch, tiny_bert_classifier, tiny_llama, without_labels
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceMeanField_ELBO

from pyro_monteclora import (
    EmptyGuide,
    MonteCLoRAConfig,
    MonteCLoRAELBO,
    MonteCLoRAGuide,
    MonteCLoRAModel,
    WishartCholesky,
    kl_scale,
)
from pyro_monteclora.training.svi import fit

QUERY = "bert.encoder.layer.0.attention.self.query"


def make(rank=4, **config):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=rank, **config))
    return model, MonteCLoRAGuide(model)


def test_traces_list_the_three_sites_of_every_adapted_layer():
    model, guide = make(modules_to_save=["classifier"])
    batch = classification_batch()
    model_trace = poutine.trace(model).get_trace(**batch)
    guide_trace = poutine.trace(guide).get_trace(**batch)
    assert len(model.adapters()) == 4  # query and value of 2 layers
    for path, adapter in model.adapters().items():
        cov = model_trace.nodes[f"{path}.covariance"]
        assert isinstance(cov["fn"], WishartCholesky) and cov["value"].shape == (4, 4)
        mix = model_trace.nodes[f"{path}.mixture_weights"]
        assert isinstance(mix["fn"], dist.Dirichlet) and mix["value"].shape == (4,)
        assert model_trace.nodes[f"{path}.lora_A"]["value"].shape == (4, adapter.in_features)
        assert isinstance(guide_trace.nodes[f"{path}.covariance"]["fn"], WishartCholesky)
        assert f"{path}.mixture_weights" in guide_trace.nodes
    obs = model_trace.nodes["obs"]
    assert obs["is_observed"] and obs["value"].shape == (8,)


def test_likelihood_is_scaled_to_the_dataset_size():
    model, _ = make()
    trace = poutine.trace(model).get_trace(**classification_batch(batch_size=8), dataset_size=800)
    assert trace.nodes["obs"]["scale"] == pytest.approx(100.0)


def test_elbo_kl_part_equals_the_closed_form_kls():
    model, guide = make(rank=3)
    with torch.no_grad():
        for posterior in guide.factor_posteriors().values():
            posterior.log_scale.normal_(std=0.3)
    inputs = without_labels(classification_batch())
    model = poutine.block(model, hide=["obs"])  # no likelihood site: the loss is the KL alone
    closed = guide.kl_divergence()
    assert closed > 0
    analytic = TraceMeanField_ELBO().differentiable_loss(model, guide, **inputs)
    torch.testing.assert_close(analytic, closed, rtol=1e-5, atol=1e-5)
    pyro.set_rng_seed(0)
    monte_carlo = Trace_ELBO(num_particles=400, vectorize_particles=False).loss(model, guide, **inputs)
    assert monte_carlo == pytest.approx(closed.item(), rel=0.1)
    # the KL weight scales exactly the latent sites, statically or through the handler
    with kl_scale(0.25):
        quarter = TraceMeanField_ELBO().differentiable_loss(model, guide, **inputs)
    torch.testing.assert_close(quarter, 0.25 * closed, rtol=1e-5, atol=1e-5)


def test_static_kl_weight_scales_the_kl():
    model, guide = make(rank=3, kl_weight=0.5)
    inputs = without_labels(classification_batch())
    loss = TraceMeanField_ELBO().differentiable_loss(poutine.block(model, hide=["obs"]), guide, **inputs)
    torch.testing.assert_close(loss, 0.5 * guide.kl_divergence(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("elbo", [Trace_ELBO, TraceMeanField_ELBO, MonteCLoRAELBO])
def test_pyro_svi_with_pyro_optim_trains_the_model(elbo):
    model, guide = make(modules_to_save=["classifier"], sample_scaler=0.01)
    batch = classification_batch(batch_size=16)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.02}), elbo())
    losses = [svi.step(**batch) for _ in range(40)]
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    names = set(pyro.get_param_store().keys())
    assert f"{model._pyro_name}.{QUERY}.lora_A_mean" in names
    assert any(name.startswith(f"{model._pyro_name}.guide.") for name in names)


def test_predictive_returns_posterior_samples_of_A():
    model, guide = make()
    inputs = without_labels(classification_batch())
    samples = Predictive(model, guide=guide, num_samples=5, return_sites=[f"{QUERY}.lora_A", "_RETURN"])(**inputs)
    # Pyro pads a site outside the model's plates with one singleton dimension per plate level
    # (here the data plate of the sampled labels)
    assert samples[f"{QUERY}.lora_A"].shape == (5, 1, 4, 32)
    assert samples["_RETURN"].shape == (5, 8, 2)


def test_predictive_without_labels_returns_label_draws_from_the_posterior_predictive():
    """Pyro's idiom: with no labels the likelihood samples ``obs``, so Predictive returns label
    draws; their frequencies follow the sampled logits (checked against each draw's softmax)."""
    model, guide = make(sample_scaler=0.5)
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(std=0.5)
    inputs = without_labels(classification_batch())
    pyro.set_rng_seed(0)
    samples = Predictive(model, guide=guide, num_samples=400, return_sites=["obs", "_RETURN"])(**inputs)
    assert samples["obs"].shape == (400, 8) and samples["obs"].dtype == torch.long
    expected = samples["_RETURN"].softmax(-1)[..., 1].mean(0)  # P(y = 1) under the predictive
    observed = samples["obs"].float().mean(0)
    torch.testing.assert_close(observed, expected, atol=0.08, rtol=0)
    # with labels the site is observed at them, as before
    labelled = classification_batch()
    trace = poutine.trace(model).get_trace(dataset_size=8, **labelled)
    assert trace.nodes["obs"]["is_observed"] and torch.equal(trace.nodes["obs"]["value"], labelled["labels"])


def test_a_model_observing_labels_without_dataset_size_warns_once_naming_the_fix():
    model, guide = make()
    batch = classification_batch()
    with pytest.warns(UserWarning, match=r"dataset_size is not set.*model.dataset_size = len"):
        model(**batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model(**batch)  # once per model
        model.dataset_size = 80
        other, _ = make(modules_to_save=["classifier"])  # no head warning either
        other(dataset_size=80, **batch)


def test_two_models_in_one_process_do_not_share_parameters():
    first, first_guide = make(modules_to_save=["classifier"])
    second, second_guide = make(modules_to_save=["classifier"])
    assert first._pyro_name != second._pyro_name
    before = {n: p.detach().clone() for n, p in second.network.named_parameters()}
    before_guide = {n: p.detach().clone() for n, p in second_guide.named_parameters()}
    batch = classification_batch(batch_size=16)
    svi = SVI(first, first_guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO())
    for _ in range(3):
        svi.step(**batch)
    for name, parameter in second.network.named_parameters():
        assert torch.equal(parameter, before[name]), name
    for name, parameter in second_guide.named_parameters():
        assert torch.equal(parameter, before_guide[name]), name
    trained = dict(first.network.named_parameters())
    assert not torch.equal(trained["classifier.weight"], before["classifier.weight"])


def test_module_local_params_mode_works_with_fit():
    pyro.settings.set(module_local_params=True)
    model, guide = make(modules_to_save=["classifier"])
    other, _ = make(modules_to_save=["classifier"])
    snapshot = {n: p.detach().clone() for n, p in other.network.named_parameters()}
    batch = classification_batch(batch_size=16)
    loader = [batch] * 4
    model.dataset_size = 64
    result = fit(model, guide, loader, epochs=2, learning_rate=0.02, progress=False)
    assert result.steps[-1]["loss"] < result.steps[0]["loss"]
    assert len(pyro.get_param_store()) == 0
    for name, parameter in other.network.named_parameters():
        assert torch.equal(parameter, snapshot[name])


def test_a_stale_param_store_entry_is_reported():
    model, guide = make()
    batch = classification_batch()
    pyro.param(f"{model._pyro_name}.{QUERY}.lora_A_mean", torch.zeros(4, 32))
    with pytest.raises(ValueError, match="clear_param_store"):
        poutine.trace(model).get_trace(**batch)


def test_lora_mode_has_no_latent_sites_and_uses_the_mean():
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4), adapter_mode="mean")
    guide = EmptyGuide(model)
    assert model.adapter_mode == "mean" and len(list(guide.parameters())) == 0
    batch = classification_batch()
    trace = poutine.trace(model).get_trace(**batch)
    assert not any(name.endswith(".covariance") for name in trace.nodes)
    assert guide.kl_divergence().item() == 0.0


def test_generation_reuses_one_draw_per_model_execution():
    model = MonteCLoRAModel(
        tiny_llama(), MonteCLoRAConfig(rank=2, target_modules=["q_proj", "v_proj"], sample_scaler=0.5)
    )
    MonteCLoRAGuide(model)
    ids = torch.randint(1, 64, (1, 4))
    with poutine.trace() as tracer:
        with model.sampled_adapters() as network:
            out = network.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 7)
    covariance_sites = [n for n in tracer.trace.nodes if n.endswith(".covariance")]
    assert len(covariance_sites) == 4  # one per adapted layer, not one per generated token


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(target_modules=["no_such_layer"]), "target_modules"),
        (dict(modules_to_save=["no_such_head"]), "modules_to_save"),
    ],
)
def test_configs_that_match_nothing_are_rejected(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=2, **kwargs))


def test_likelihood_and_model_mismatch_is_rejected():
    with pytest.raises(ValueError, match="causal-lm"):
        MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=2), likelihood="causal-lm")
    with pytest.raises(ValueError, match="sequence-classification"):
        MonteCLoRAModel(
            tiny_llama(), MonteCLoRAConfig(rank=2, target_modules=["q_proj"]), likelihood="sequence-classification"
        )
    with pytest.raises(ValueError, match="likelihood must be one of"):
        MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=2), likelihood="regression")


def test_guide_arguments_are_validated():
    model, _ = make()
    with pytest.raises(ValueError, match="scale_tril"):
        MonteCLoRAGuide(model, scale_tril="banded")
    with pytest.raises(ValueError, match="EmptyGuide needs a model without latent sites"):
        EmptyGuide(model)
    lora = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=2), adapter_mode="mean")
    with pytest.raises(ValueError, match="adapter_mode='sample'"):
        MonteCLoRAGuide(lora)
    with pytest.raises(ValueError, match="adapter_mode must be one of"):
        MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=2), adapter_mode="laplace")


def test_full_scale_tril_guide_learns_off_diagonal_terms():
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=3))
    guide = MonteCLoRAGuide(model, scale_tril="full")
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(std=0.1)
    Trace_ELBO().differentiable_loss(model, guide, **classification_batch()).backward()
    posterior = next(iter(guide.factor_posteriors().values()))
    assert posterior.scale_offdiag.grad.tril(-1).abs().sum() > 0


def test_monteclora_elbo_equals_trace_mean_field_elbo_on_the_same_draws():
    model, guide = make(rank=3, modules_to_save=["classifier"], kl_weight=0.7, sample_scaler=0.2)
    with torch.no_grad():
        for posterior in guide.factor_posteriors().values():
            posterior.log_scale.normal_(std=0.3)
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(std=0.1)
    batch = classification_batch()
    for handler in (poutine.block(hide=[]), kl_scale(0.3)):  # block(hide=[]) changes nothing
        with handler:
            pyro.set_rng_seed(4)
            ours = MonteCLoRAELBO().differentiable_loss(model, guide, dataset_size=80, **batch)
            pyro.set_rng_seed(4)
            reference = TraceMeanField_ELBO().differentiable_loss(model, guide, dataset_size=80, **batch)
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)
    grads = torch.autograd.grad(ours, [next(iter(guide.factor_posteriors().values())).log_scale])
    assert grads[0].abs().sum() > 0


def test_monteclora_elbo_of_the_lora_mode_is_the_scaled_cross_entropy():
    batch = classification_batch(batch_size=16)
    lora_model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=2), adapter_mode="mean")
    lora_guide = EmptyGuide(lora_model)
    with torch.no_grad():
        logits = lora_model.network(**without_labels(batch)).logits
    expected = torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
    assert MonteCLoRAELBO().loss(lora_model, lora_guide, **batch) == pytest.approx(expected, rel=1e-5)


def test_the_guide_draws_every_layer_at_once_yet_each_site_follows_its_own_posterior():
    """All layers' factors come from a few batched draws; each layer's site must still carry its
    own distribution and follow it: E[L L^T] = nu diag(e^{2 sigma_l}) and E[pi] = c_l / sum(c_l),
    checked per layer against layers given different parameters (an index mix-up would fail)."""
    model, guide = make(rank=3, modules_to_save=["classifier"])
    posteriors = guide.factor_posteriors()
    with torch.no_grad():
        for index, posterior in enumerate(posteriors.values()):
            posterior.log_scale.fill_(0.3 * index - 0.4)
            posterior.log_concentration.copy_(torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0]) * (index + 1)))
    draws = 4000
    sums = {stem: [torch.zeros(3, 3), torch.zeros(4)] for stem in posteriors}
    with torch.no_grad():
        for _ in range(draws):
            trace = poutine.trace(guide).get_trace()
            for stem in posteriors:
                path = stem.rsplit(".", 1)[0]
                L = trace.nodes[f"{path}.covariance"]["value"]
                sums[stem][0] += L @ L.mT
                sums[stem][1] += trace.nodes[f"{path}.mixture_weights"]["value"]
    df = model.config.wishart_df
    for index, (stem, posterior) in enumerate(posteriors.items()):
        path = stem.rsplit(".", 1)[0]
        expected = df * torch.diag((2 * posterior.log_scale.detach()).exp())
        torch.testing.assert_close(sums[stem][0] / draws, expected, rtol=0.06, atol=0.06 * expected.max().item())
        torch.testing.assert_close(sums[stem][1] / draws, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.01, rtol=0)
        site = trace.nodes[f"{path}.covariance"]
        assert isinstance(site["fn"], WishartCholesky) and not site["is_observed"]
        torch.testing.assert_close(site["fn"].log_scale_diagonal, posterior.log_scale)


def test_an_outer_replay_still_decides_the_guide_draws_and_gradients_reach_every_layer():
    model, guide = make(rank=3)
    first = poutine.trace(guide).get_trace()
    again = poutine.trace(poutine.replay(guide, trace=first)).get_trace()
    for name, site in first.nodes.items():
        if site["type"] == "sample":
            assert torch.equal(again.nodes[name]["value"], site["value"]), name
    trace = poutine.trace(guide).get_trace()
    loss = sum(
        site["value"].pow(2).sum()
        for site_name, site in trace.nodes.items()
        if site["type"] == "sample" and not site_name.endswith(".noise")
    )
    loss.backward()
    for stem, posterior in guide.factor_posteriors().items():
        assert posterior.log_scale.grad is not None and posterior.log_scale.grad.abs().sum() > 0, stem
        assert posterior.log_concentration.grad is not None and posterior.log_concentration.grad.abs().sum() > 0, stem


def test_the_batched_kl_is_not_used_for_a_site_the_model_conditions_on():
    from pyro_monteclora.infer.elbo import MonteCLoRAELBO

    model, guide = make(rank=3)
    batch = classification_batch()
    path = next(iter(model.adapters()))
    guide_trace = poutine.trace(guide).get_trace(**batch)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**batch)
    value, handled = MonteCLoRAELBO._batched_kl_part(guide, guide_trace, model_trace)
    assert set(handled) == set(guide.kl_terms())
    torch.testing.assert_close(-value, guide.kl_divergence())
    fixed = {f"{path}.covariance": guide_trace.nodes[f"{path}.covariance"]["value"].detach()}
    conditioned = poutine.condition(model, data=fixed)
    model_trace = poutine.trace(poutine.replay(conditioned, trace=guide_trace)).get_trace(**batch)
    assert MonteCLoRAELBO._batched_kl_part(guide, guide_trace, model_trace) == (0.0, None)


def test_a_classifier_head_left_out_of_modules_to_save_is_warned_about():
    with pytest.warns(UserWarning, match=r"classification head \['classifier'\] is not in modules_to_save"):
        MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=2, modules_to_save=["classifier"]))
