"""MonteCLoRALinear: exact base output at B = 0, equality with hand-written LoRA, the law of A, gradients."""

import torch
from conftest import classification_batch, tiny_bert_classifier
from pyro import poutine
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.nn.layers import MonteCLoRALinear


def make_layer(**config):
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    cfg = MonteCLoRAConfig(rank=3, **config)
    return base, MonteCLoRALinear(base, cfg, "block.proj")


def test_zero_B_gives_the_base_output_exactly_even_when_sampling():
    base, layer = make_layer(sample_scaler=0.5)
    x = torch.randn(4, 7, 6)
    with poutine.trace() as tracer:
        layer.sample_factors()
        out = layer(x)
    assert "block.proj.lora_A" in tracer.trace.nodes
    assert torch.equal(out, base(x))


def test_mean_adapter_equals_hand_written_lora():
    base, layer = make_layer(alpha=6.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 6)
    expected = base(x) + (6.0 / 3) * (x @ layer.lora_A_mean.T) @ layer.lora_B.T
    torch.testing.assert_close(layer(x), expected)


def test_columns_of_A_have_the_documented_mean_and_covariance():
    torch.manual_seed(1)
    scaler, components, alpha0 = 0.5, 4, 1.0
    base, layer = make_layer(sample_scaler=scaler, num_components=components)
    draws = []
    for _ in range(6000):
        layer.sample_factors()
        draws.append(layer.factors()[0].detach())
    A = torch.stack(draws)  # (n, r, d_in)
    M = layer.lora_A_mean.detach()
    torch.testing.assert_close(A.mean(0), M, atol=0.02, rtol=0)
    delta = (A - M).transpose(-1, -2).reshape(-1, 3)  # every column is one r-vector
    covariance = delta.T @ delta / len(delta)
    # E||pi||^2 for Dir(alpha0 1_N) is (alpha0 + 1) / (N alpha0 + 1); E[Sigma] = nu I with nu = r = 3
    expected = scaler**2 * (alpha0 + 1) / (components * alpha0 + 1) * 3.0 * torch.eye(3)
    torch.testing.assert_close(covariance, expected, atol=0.08 * expected.max().item(), rtol=0)


def test_gradients_reach_adapter_and_guide_parameters_and_no_base_weight():
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, sample_scaler=0.1))
    guide = MonteCLoRAGuide(model)
    for adapter in model.adapters().values():
        with torch.no_grad():
            adapter.lora_B.normal_(std=0.1)
    loss = Trace_ELBO().differentiable_loss(model, guide, **classification_batch())
    loss.backward()
    for path, adapter in model.adapters().items():
        assert adapter.lora_A_mean.grad is not None and adapter.lora_A_mean.grad.abs().sum() > 0, path
        assert adapter.lora_B.grad is not None and adapter.lora_B.grad.abs().sum() > 0, path
    for name, posterior in guide.factor_posteriors().items():
        assert posterior.log_scale.grad.abs().sum() > 0, name
        assert posterior.log_concentration.grad.abs().sum() > 0, name
    trainable = {n for n, p in model.network.named_parameters() if p.requires_grad}
    for name, parameter in model.network.named_parameters():
        if name not in trainable:
            assert parameter.grad is None, name
    assert all(name.endswith(("lora_A_mean", "lora_B")) for name in trainable)


def test_low_rank_branch_is_fp32_so_a_tiny_perturbation_survives_bf16_autocast():
    base, layer = make_layer(sample_scaler=1e-6)
    with torch.no_grad():
        layer.lora_B.fill_(1.0)
    x = torch.randn(2, 6)
    layer.sample_factors()
    A, B = layer.factors()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        update = torch.nn.functional.linear(torch.nn.functional.linear(x, A), B)  # what bf16 would do
        mean_update = torch.nn.functional.linear(torch.nn.functional.linear(x, layer.lora_A_mean), B)
    assert torch.equal(update, mean_update), "bf16 rounds an s = 1e-6 perturbation away"
    # the adapter's own branch keeps it
    exact = layer.scaling * (x @ A.T) @ B.T - layer.scaling * (x @ layer.lora_A_mean.T) @ B.T
    assert exact.abs().max() > 0
    assert A.dtype == torch.float32


def test_random_B_adds_its_own_sites():
    base, layer = make_layer(random_B=True, sample_scaler=0.1)
    with poutine.trace() as tracer:
        layer.sample_factors()
    nodes = tracer.trace.nodes
    assert nodes["block.proj.lora_B.covariance"]["value"].shape == (3, 3)
    assert nodes["block.proj.lora_B"]["value"].shape == (5, 3)
    assert not torch.equal(nodes["block.proj.lora_B"]["value"], layer.lora_B)


def test_conv1d_layers_of_gpt2_are_adapted():
    from conftest import tiny_gpt2

    hf = tiny_gpt2()
    reference = tiny_gpt2()
    model = MonteCLoRAModel(hf, MonteCLoRAConfig(rank=2, target_modules=["c_attn"]), likelihood="causal-lm")
    assert len(model.adapters()) == 2
    ids = torch.randint(1, 64, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(input_ids=ids), reference.eval()(input_ids=ids).logits)


def test_factors_formed_together_equal_each_layers_own_sites_and_gradients_stay_per_layer():
    """All layers' factors are formed in one batched operation per shape (q/v: 32 wide; up_proj:
    64 tall, so its random B differs in shape), yet every layer's A (and B) is exactly
    M + s ||pi|| L Z from its own sites, and d loss / d M of each layer is its own."""
    from conftest import tiny_llama

    from pyro_monteclora.nn.layers import sample_adapter_factors

    scaler = 0.3
    config = MonteCLoRAConfig(
        rank=3, sample_scaler=scaler, random_B=True, target_modules=["q_proj", "v_proj", "up_proj"]
    )
    model = MonteCLoRAModel(tiny_llama(), config, likelihood="causal-lm")
    adapters = model.adapters()
    assert len(adapters) == 6
    for adapter in adapters.values():
        with torch.no_grad():
            adapter.lora_B.normal_()
    with poutine.trace() as tracer:
        sample_adapter_factors(list(adapters.values()))
    nodes = tracer.trace.nodes
    coefficients = {}
    loss = 0.0
    for index, (path, adapter) in enumerate(adapters.items()):
        A, B = adapter.factors()
        for factor, value, mean in (("lora_A", A, adapter.lora_A_mean), ("lora_B", B, adapter.lora_B)):
            stem = path if factor == "lora_A" else f"{path}.lora_B"
            L = nodes[f"{stem}.covariance"]["value"]
            weights = nodes[f"{stem}.mixture_weights"]["value"]
            noise = nodes[f"{path}.{factor}.noise"]["value"]
            delta = scaler * weights.norm() * L @ noise
            expected = mean + (delta.T if factor == "lora_B" else delta)
            torch.testing.assert_close(value, expected, atol=1e-6, rtol=1e-5)
            assert nodes[f"{path}.{factor}"]["value"] is value
        coefficients[path] = float(index + 1)
        loss = loss + coefficients[path] * A.sum()
    loss.backward()
    for path, adapter in adapters.items():
        torch.testing.assert_close(adapter.lora_A_mean.grad, torch.full_like(adapter.lora_A_mean, coefficients[path]))
        adapter.clear_factors()


def test_sampled_fp32_forward_equals_the_formula_on_a_batch_of_sequences():
    base, layer = make_layer(alpha=6.0, sample_scaler=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(4, 7, 6)
    layer.sample_factors()
    A, B = layer.factors()
    expected = base(x) + (6.0 / 3) * (x @ A.T) @ B.T
    torch.testing.assert_close(layer(x), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the general (mixed precision) path agrees
        mixed = layer(x)
    assert mixed.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), expected, atol=0.05, rtol=0.02)


def test_draws_with_a_batch_dimension_pair_each_layer_with_its_own_mean_and_draws():
    """Under a plate of P draws (vectorised prediction), P = the number of layers on purpose: a
    stacking that mixed the layer axis with the draws' axis would pair layer p with draw p."""
    import pyro
    from conftest import tiny_llama

    from pyro_monteclora.nn.layers import sample_adapter_factors

    scaler = 0.3
    config = MonteCLoRAConfig(rank=3, sample_scaler=scaler, target_modules=["q_proj", "v_proj"])
    model = MonteCLoRAModel(tiny_llama(), config, likelihood="causal-lm")
    adapters = model.adapters()
    draws = len(adapters)
    with poutine.trace() as tracer, pyro.plate("draws", draws, dim=-1):
        sample_adapter_factors(list(adapters.values()))
    nodes = tracer.trace.nodes
    for path, adapter in adapters.items():
        A, _ = adapter.factors()
        assert A.shape == (draws, 3, 32)
        L = nodes[f"{path}.covariance"]["value"]
        weights = nodes[f"{path}.mixture_weights"]["value"]
        noise = nodes[f"{path}.lora_A.noise"]["value"]
        for p in range(draws):
            expected = adapter.lora_A_mean + scaler * weights[p].norm() * L[p] @ noise[p]
            torch.testing.assert_close(A[p], expected, atol=1e-6, rtol=1e-5)
        adapter.clear_factors()


def test_dropout_in_training_reaches_the_adapter_input_only():
    base, layer = make_layer(alpha=6.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    layer.train()
    x = torch.randn(4, 7, 6)
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    dropped = torch.nn.functional.dropout(x, 0.5, training=True)
    expected = base(x) + (6.0 / 3) * (dropped @ layer.lora_A_mean.T) @ layer.lora_B.T
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, base(x) + (6.0 / 3) * (x @ layer.lora_A_mean.T) @ layer.lora_B.T)
