"""BLoB's pair on MonteCLoRA's model: the Gaussian prior (``MonteCLoRAConfig(prior="gaussian")``) and
``MeanFieldGuide``: its sites, its closed-form KL (by hand and by Monte Carlo), where its gradients
go, training through ``fit``, the posterior predictive and the checkpoint round trip."""

import math

import pyro
import pytest
import torch
from conftest import classification_batch, tiny_bert_classifier, without_labels
from pyro import poutine
from pyro.infer import TraceMeanField_ELBO
from test_train import loaders

from pyro_monteclora import (
    GaussianPrior,
    MeanFieldGuide,
    MonteCLoRAConfig,
    MonteCLoRAELBO,
    MonteCLoRAGuide,
    MonteCLoRAModel,
    build_mean_field,
    load_pretrained,
    predict,
)
from pyro_monteclora.nn.sites import LATENT_SITE
from pyro_monteclora.training.svi import fit


def make(**config):
    config = {"rank": 4, "modules_to_save": ["classifier"], "prior": "gaussian", **config}
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**config))
    return model, MeanFieldGuide(model)


def spread(model, guide, scale=0.1, seed=3):
    """Give every M, B and sigma values away from their initialisation (B = 0 hides A entirely)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_A_mean.normal_(std=0.2, generator=generator)
            adapter.lora_B.normal_(std=0.5, generator=generator)
        for log_scale in guide.parameters():
            log_scale.copy_(math.log(scale) + 0.3 * torch.randn(log_scale.shape, generator=generator))


def test_the_model_has_one_gaussian_site_per_factor_and_uses_its_draw_as_A():
    model, _ = make(prior_std=0.3, kl_weight=0.5, random_B=True)
    batch = classification_batch()
    trace = poutine.trace(model).get_trace(**without_labels(batch))
    latent = {
        name: site for name, site in trace.nodes.items() if site["type"] == "sample" and name not in ("obs", "data")
    }
    expected = {f"{path}.{factor}" for path in model.adapters() for factor in ("lora_A", "lora_B")}
    assert set(latent) == expected  # no covariance, mixture-weight or noise site
    for name, site in latent.items():
        adapter = model.adapters()[name.rsplit(".", 1)[0]]
        shape = adapter.lora_A_mean.shape if name.endswith("lora_A") else adapter.lora_B.shape
        assert site["fn"].event_shape == shape and site["fn"].batch_shape == ()
        assert torch.equal(site["fn"].base_dist.loc, torch.zeros(shape))
        assert torch.equal(site["fn"].base_dist.scale, torch.full(shape, 0.3))
        assert site["scale"] == 0.5 and site["infer"][LATENT_SITE]
    # the layer uses the draw as its factor: drawing A = M and B = lora_B gives the mean adapter
    means = {f"{p}.lora_A": a.lora_A_mean for p, a in model.adapters().items()}
    means.update({f"{p}.lora_B": a.lora_B for p, a in model.adapters().items()})
    with torch.no_grad():
        spread(model, MeanFieldGuide(model))
        conditioned = poutine.condition(model.logits, data=means)(**without_labels(batch))
        with model.mean_adapters():
            mean_logits = model.logits(**without_labels(batch))
        drawn = model.logits(**without_labels(batch))
    torch.testing.assert_close(conditioned, mean_logits, rtol=0, atol=0)
    assert not torch.allclose(drawn, mean_logits)


def test_the_kl_is_the_closed_form_by_hand_and_a_monte_carlo_estimate():
    model, guide = make(prior_std=0.3, random_B=True)
    spread(model, guide)
    kls = guide.kl_terms()
    adapters = model.adapters()
    assert set(kls) == set(guide.site_names()) and len(kls) == 2 * len(adapters)
    scales = guide.scales()
    for name, kl in kls.items():
        path, factor = name.rsplit(".", 1)
        m = adapters[path].factor_mean(factor).detach().double()
        s = scales[name].detach().double()
        # KL(N(m, s^2) || N(0, p^2)) = 1/2 [s^2/p^2 + m^2/p^2 - 1 - log(s^2/p^2)] per entry
        by_hand = 0.5 * (s**2 / 0.09 + m**2 / 0.09 - 1 - torch.log(s**2 / 0.09)).sum()
        torch.testing.assert_close(kl.double(), by_hand, rtol=1e-5, atol=1e-4)
    total = sum(kls.values())
    torch.testing.assert_close(guide.kl_divergence(), total)
    # Monte Carlo: E_q[log q(A) - log p(A)] over the guide's own draws; within 4 standard errors
    prior = model.prior
    samples = []
    with torch.no_grad():
        for _ in range(1000):
            values, posteriors = guide.draw_all()
            samples.append(
                sum(
                    posteriors[n].log_prob(v).double() - prior.factor(v.shape).log_prob(v).double()
                    for n, v in values.items()
                )
            )
    samples = torch.stack(samples)
    error = samples.std() / math.sqrt(len(samples))
    assert abs(samples.mean() - total.double()) < 4 * error, (samples.mean(), total, error)
    assert error < 0.01 * total  # the estimate is sharp enough to mean something


def test_the_elbo_takes_the_guides_batched_kl_and_agrees_with_pyros():
    model, guide = make(prior_std=0.5, kl_weight=0.7)
    spread(model, guide)
    batch = classification_batch()
    pyro.set_rng_seed(4)
    ours = MonteCLoRAELBO().differentiable_loss(model, guide, dataset_size=80, **batch)
    pyro.set_rng_seed(4)
    reference = TraceMeanField_ELBO().differentiable_loss(model, guide, dataset_size=80, **batch)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-4)
    # and the KL the ELBO subtracts is the guide's batched one (shifted by 1: the loss moves by 0.7)
    names, kls = guide.batched_kl()
    guide.batched_kl = lambda: (names, kls + 1.0 / len(names))
    pyro.set_rng_seed(4)
    shifted = MonteCLoRAELBO().differentiable_loss(model, guide, dataset_size=80, **batch)
    torch.testing.assert_close(shifted - ours, torch.tensor(0.7), rtol=0, atol=1e-3)


def test_gradients_reach_exactly_M_B_the_head_and_the_scales():
    model, guide = make()
    spread(model, guide)
    MonteCLoRAELBO().differentiable_loss(model, guide, dataset_size=80, **classification_batch()).backward()
    expected = set()
    for adapter in model.adapters().values():
        expected |= {id(adapter.lora_A_mean), id(adapter.lora_B)}
    expected |= {id(p) for p in model.network.classifier.parameters()}
    expected |= {id(p) for p in guide.parameters()}
    assert len(list(guide.parameters())) == len(model.adapters())
    reached = set()
    for parameter in [*model.parameters(), *guide.parameters()]:
        if parameter.grad is not None:
            assert bool(torch.isfinite(parameter.grad).all())
            assert bool((parameter.grad != 0).any())
            reached.add(id(parameter))
    assert reached == expected


def test_it_trains_through_fit_and_its_predictive_has_epistemic_spread():
    model, guide = make(kl_weight=0.02)
    train, test = loaders(train_size=128)
    scales_before = [p.detach().clone() for p in guide.parameters()]
    result = fit(model, guide, train, epochs=4, learning_rate=5e-3, seed=0, progress=False)
    losses = [epoch["loss"] for epoch in result.epochs]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])), losses
    assert all(not torch.equal(p, before) for p, before in zip(guide.parameters(), scales_before))
    batch = next(iter(test))
    pyro.set_rng_seed(1)
    sampled = predict(model, guide, [batch], num_samples=8)
    # positive, and small: sigma starts at BLoB's 1e-3 scale and four short epochs barely widen it
    assert bool((sampled.mutual_information > 0).all())
    # S = 0 is the mean adapter A = M: LoRA's predictive, no epistemic part
    mean = predict(model, guide, [batch], num_samples=0)
    with model.mean_adapters(), torch.no_grad():
        model.eval()
        lora = model.logits(**{k: batch[k] for k in ("input_ids", "attention_mask")}).softmax(-1)
    torch.testing.assert_close(mean.probs, lora)
    assert bool((mean.mutual_information == 0).all())
    assert not torch.equal(sampled.probs, mean.probs)


def test_a_wider_posterior_gives_more_mutual_information():
    model, guide = make()
    batch = {k: v for k, v in classification_batch(batch_size=16).items() if k != "labels"}
    information = []
    for scale in (0.02, 0.2):
        spread(model, guide, scale=scale)
        pyro.set_rng_seed(0)
        information.append(predict(model, guide, [batch], num_samples=8).mutual_information.mean().item())
    assert 0 < information[0] < information[1], information


def test_stacked_adapters_draw_from_the_guide():
    model, guide = make()
    spread(model, guide)
    with model.stacked_adapters(guide, 3):
        stacked = [adapter.factors()[0] for adapter in model.adapters().values()]
    assert all(A.shape[0] == 3 and not torch.equal(A[0], A[1]) for A in stacked)


def test_save_and_load_give_the_same_predictions(tmp_path):
    model, guide = make(prior_std=0.4, kl_weight=0.3)
    spread(model, guide)
    model.save_pretrained(tmp_path / "blob", guide=guide)
    loaded, loaded_guide = load_pretrained(tmp_path / "blob", base_model=tiny_bert_classifier())
    assert type(loaded_guide) is MeanFieldGuide and loaded_guide.model is loaded
    assert isinstance(loaded.prior, GaussianPrior) and loaded.prior.std == 0.4 and loaded.config == model.config
    assert loaded_guide.init_scale == guide.init_scale
    for (name, p), (loaded_name, q) in zip(guide.named_parameters(), loaded_guide.named_parameters()):
        assert name == loaded_name and torch.equal(p, q)
    batch = classification_batch(batch_size=6)
    outputs = []
    for m, g in ((model, guide), (loaded, loaded_guide)):
        pyro.set_rng_seed(7)
        outputs.append(predict(m, g, [batch], num_samples=4))
    assert torch.equal(outputs[0].probs, outputs[1].probs)
    assert torch.equal(outputs[0].mutual_information, outputs[1].mutual_information)


def test_the_guides_refuse_the_other_prior_and_bad_options():
    wishart = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4))
    with pytest.raises(ValueError, match=r"MeanFieldGuide needs a model with the Gaussian prior; .*'wishart-mixture'"):
        MeanFieldGuide(wishart)
    gaussian, _ = make()
    with pytest.raises(ValueError, match=r"MonteCLoRAGuide needs .*wishart-mixture.*MeanFieldGuide"):
        MonteCLoRAGuide(gaussian)
    lora = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, prior="gaussian"), adapter_mode="mean")
    with pytest.raises(ValueError, match=r"adapter_mode='sample'.*EmptyGuide"):
        MeanFieldGuide(lora)
    for bad in (0.0, -1e-3, math.nan, math.inf, True):
        with pytest.raises(ValueError, match=r"MeanFieldGuide.init_scale must be a finite number > 0"):
            MeanFieldGuide(gaussian, init_scale=bad)


def test_the_guide_starts_in_blobs_range():
    _, guide = make()
    scales = torch.cat([s.detach().flatten() for s in guide.scales().values()])
    assert float(scales.min()) >= 1.25e-3 - 1e-9 and float(scales.max()) <= 2.5e-3 + 1e-9
    assert float(scales.std()) > 1e-4  # drawn, not constant


def test_build_mean_field_is_the_blob_method():
    model, guide = build_mean_field(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, prior_std=0.1))
    assert model.config.prior == "gaussian" and model.prior.std == 0.1 and model.adapter_mode == "sample"
    assert isinstance(guide, MeanFieldGuide) and guide.model is model
    with pytest.raises(ValueError, match=r"cooperative_weight must be 0 with prior='gaussian'"):
        build_mean_field(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, cooperative_weight=0.1))


def test_the_commands_sample_a_mean_field_checkpoint_by_default():
    from pyro_monteclora.cli.checkpoints import default_samples

    record = {"adapter_mode": "sample", "guide": {"class": "MeanFieldGuide", "options": {"init_scale": 2.5e-3}}}
    assert default_samples(record, None) == 10 and default_samples(record, 3) == 3
    assert default_samples({"adapter_mode": "mean", "guide": {"class": "EmptyGuide"}}, None) == 0
