"""The stacked site layout (``MonteCLoRAConfig.site_layout="stacked"``): the same ELBO and the same
gradients as the per-layer layout from the same draws (with MonteCLoRAELBO and Pyro's own ELBOs), a
number of sites that does not grow with the adapted layers, per-layer values at the rows
``site_index`` names, checkpoints, generation, and what it refuses."""

import pyro
import pytest
import torch
from conftest import tiny_llama, word_tokenizer
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, load_pretrained
from pyro_monteclora.evaluation.generation import generate_answers
from pyro_monteclora.infer.elbo import MonteCLoRAELBO

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = torch.randint(4, 60, (4, 8), generator=torch.Generator().manual_seed(0))


def build(layout, targets=("q_proj", "v_proj"), scale_tril="diagonal", **options):
    pyro.clear_param_store()
    config = MonteCLoRAConfig(rank=4, target_modules=list(targets), sample_scaler=0.5, site_layout=layout, **options)
    model = MonteCLoRAModel(tiny_llama(initializer_range=0.2), config)
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)
    model.dataset_size = 4
    torch.manual_seed(7)  # the guides' initial concentrations: the same random stream in both layouts
    return model, MonteCLoRAGuide(model, scale_tril=scale_tril)


def guide_gradients(guide):
    """Each factor's (sigma, beta) gradients, keyed by its site stem, in either layout."""
    posteriors = guide._modules["posteriors"]
    if guide.stacked:
        return {
            f"{path}.{factor}": (posteriors.log_scale.grad[i], posteriors.log_concentration.grad[i])
            for i, (_, path, factor, _, _) in enumerate(guide._sites)
        }
    return {
        f"{path}.{factor}": (posteriors[key].log_scale.grad, posteriors[key].log_concentration.grad)
        for key, path, factor, _, _ in guide._sites
    }


@pytest.mark.parametrize("targets", [("q_proj", "v_proj"), ALL_LINEAR], ids=["q-v", "all-linear"])
def test_both_layouts_give_the_same_elbo_and_gradients_from_the_same_draws(targets):
    results = {}
    for layout in ("per-layer", "stacked"):
        model, guide = build(layout, targets)
        losses = {}
        for name, elbo in (("ours", MonteCLoRAELBO()), ("mean-field", TraceMeanField_ELBO()), ("trace", Trace_ELBO())):
            pyro.set_rng_seed(1)
            losses[name] = elbo.differentiable_loss(model, guide, input_ids=IDS, labels=IDS)
        losses["ours"].backward()
        adapters = {path: (a.lora_A_mean.grad, a.lora_B.grad) for path, a in model.adapters().items()}
        results[layout] = ({k: float(v) for k, v in losses.items()}, guide_gradients(guide), adapters)
    (per_layer, per_layer_guide, per_layer_adapters), (stacked, stacked_guide, stacked_adapters) = results.values()
    assert per_layer == pytest.approx(stacked, rel=1e-6)
    assert per_layer["ours"] == pytest.approx(per_layer["mean-field"], rel=1e-6)
    assert per_layer_guide.keys() == stacked_guide.keys()
    for stem, (sigma, beta) in per_layer_guide.items():
        torch.testing.assert_close(stacked_guide[stem][0], sigma, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(stacked_guide[stem][1], beta, rtol=1e-4, atol=1e-6)
        assert sigma.abs().sum() > 0 and beta.abs().sum() > 0
    for path, grads in per_layer_adapters.items():
        for ours, theirs in zip(stacked_adapters[path], grads):
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


def test_the_number_of_sites_does_not_grow_with_the_adapted_layers():
    counts = {}
    for targets in (("q_proj",), ("q_proj", "v_proj"), ALL_LINEAR):
        for layout in ("per-layer", "stacked"):
            model, guide = build(layout, targets)
            guide_trace = poutine.trace(guide).get_trace()
            trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(input_ids=IDS, labels=IDS)
            sites = [n for n, site in trace.nodes.items() if site["type"] == "sample" and n not in ("obs", "data")]
            counts[len(model.adapters()), layout] = len(sites)
    # per layer: covariance, mixture weights, noise and the factor; stacked: the same four per width
    assert counts[2, "per-layer"] == 8 and counts[4, "per-layer"] == 16 and counts[14, "per-layer"] == 56
    assert counts[2, "stacked"] == counts[4, "stacked"] == 4  # one width (32)
    assert counts[14, "stacked"] == 8  # two widths: 32 (q, k, v, o, gate, up) and 64 (down)


def test_site_index_names_the_rows_that_hold_each_layers_values():
    model, guide = build("stacked", ALL_LINEAR)
    guide_trace = poutine.trace(guide).get_trace()
    with model.retained_draws():
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(input_ids=IDS, labels=IDS)
        held = {path: adapter.factors()[0] for path, adapter in model.adapters().items()}
    index = model.site_index()
    assert set(index) == {f"{path}.lora_A" for path in model.adapters()}
    for path, A in held.items():
        site, row = index[f"{path}.lora_A"]
        assert torch.equal(trace.nodes[site]["value"][row], A)
    assert index["model.layers.1.mlp.down_proj.lora_A"] == ("stacked.lora_A.64", 1)
    per_layer, _ = build("per-layer")
    assert per_layer.site_index()["model.layers.0.self_attn.q_proj.lora_A"] == (
        "model.layers.0.self_attn.q_proj.lora_A",
        None,
    )


def test_random_B_and_a_full_scale_tril_are_stacked_too():
    model, guide = build("stacked", random_B=True, scale_tril="full")
    assert guide._modules["posteriors"].scale_offdiag.shape == (8, 4, 4)  # 4 layers x (A, B)
    guide_trace = poutine.trace(guide).get_trace()
    names = {n for n in guide_trace.nodes if guide_trace.nodes[n]["type"] == "sample"}
    kinds = ("covariance", "mixture_weights", "noise")
    assert names == {f"stacked.{factor}.32.{kind}" for factor in ("lora_A", "lora_B") for kind in kinds}
    loss = MonteCLoRAELBO().differentiable_loss(model, guide, input_ids=IDS, labels=IDS)
    loss.backward()
    assert guide._modules["posteriors"].scale_offdiag.grad.abs().sum() > 0
    kl = guide.kl_divergence()
    names, kls = guide.batched_kl()
    assert len(names) == 4 and torch.allclose(kls.sum(), kl)


def test_a_stacked_checkpoint_round_trips_and_generation_runs(tmp_path):
    model, guide = build("stacked", ALL_LINEAR)
    model.save_pretrained(tmp_path, guide=guide)
    network = tiny_llama(initializer_range=0.2)
    loaded, loaded_guide = load_pretrained(tmp_path, base_model=network)
    assert loaded.config.site_layout == "stacked" and loaded_guide.stacked
    for (n1, p1), (n2, p2) in zip(guide.named_parameters(), loaded_guide.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    assert [n for n, _ in loaded_guide.named_parameters()] == ["posteriors.log_scale", "posteriors.log_concentration"]
    pyro.set_rng_seed(3)
    first = generate_answers(model, guide, word_tokenizer(), ["capital of peru ?"], 3, max_new_tokens=3)
    pyro.set_rng_seed(3)
    again = generate_answers(loaded, loaded_guide, word_tokenizer(), ["capital of peru ?"], 3, max_new_tokens=3)
    assert first[0].generations == again[0].generations and len(first[0].generations) == 3


def test_the_gaussian_prior_keeps_the_per_layer_layout():
    with pytest.raises(ValueError, match=r"site_layout must be 'per-layer' with prior='gaussian'"):
        MonteCLoRAConfig(prior="gaussian", site_layout="stacked")
    with pytest.raises(ValueError, match=r"site_layout must be one of 'per-layer', 'stacked', got 'fused'"):
        MonteCLoRAConfig(site_layout="fused")


def test_each_stacked_row_is_its_layers_posterior_with_random_B_and_distinct_parameters():
    """Every factor's (sigma, beta, lower triangle) given its own values in the per-layer guide and
    copied to its row of the stacked one: the same closed-form KL, site by site summed per group."""
    per_layer_model, per_layer = build("per-layer", ALL_LINEAR, scale_tril="full", random_B=True)
    _, stacked = build("stacked", ALL_LINEAR, scale_tril="full", random_B=True)
    rows = stacked._modules["posteriors"]
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for index, (key, *_rest) in enumerate(per_layer._sites):
            posterior = per_layer._modules["posteriors"][key]
            for name in ("log_scale", "log_concentration", "scale_offdiag"):
                value = 0.3 * torch.randn(getattr(posterior, name).shape, generator=generator)
                getattr(posterior, name).copy_(value)
                getattr(rows, name)[index].copy_(value)
    terms = per_layer.kl_terms()
    names, kls = stacked.batched_kl()
    assert torch.allclose(stacked.kl_divergence(), per_layer.kl_divergence(), rtol=1e-5)
    for site, kl in zip(names, kls):  # "stacked.lora_B.32.covariance": the sum over its layers' sites
        _, factor, width, kind = site.split(".")
        expected = 0.0
        for path, layer in per_layer_model.adapters().items():
            if (layer.in_features if factor == "lora_A" else layer.out_features) == int(width):
                stem = path if factor == "lora_A" else f"{path}.lora_B"
                expected = expected + terms[f"{stem}.{kind}"]
        torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-5)
    assert len({float(kl) for kl in kls}) == len(kls)  # distinct groups


def test_posterior_scale_and_per_layer_calls_under_the_stacked_layout():
    model, guide = build("stacked")
    guide_trace = poutine.trace(guide).get_trace()
    with model.posterior_scale(0.0), model.retained_draws():
        poutine.replay(model, trace=guide_trace)(input_ids=IDS)
        for adapter in model.adapters().values():
            assert torch.equal(adapter.factors()[0], adapter.lora_A_mean)  # tau = 0: the mean
    adapter = next(iter(model.adapters().values()))
    with pytest.raises(ValueError, match=r"with site_layout='stacked' the sites of all layers are emitted together"):
        adapter.sample_factors()
