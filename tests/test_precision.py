"""Mixed precision: a bf16 base under autocast keeps a 1e-6 perturbation in A, a bf16 layer output
moves as one rounding of the exact perturbation predicts, trainable tensors stay fp32, SVI trains,
and precisions a device cannot run are refused."""

import pytest
import torch
from conftest import VOCAB, classification_batch, tiny_bert_classifier, without_labels
from pyro import poutine

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, fit
from pyro_monteclora.distributions import lora_perturbation
from pyro_monteclora.nn.precision import autocast, cast_frozen, check_precision


def bf16_model(sample_scaler):
    model = MonteCLoRAModel(
        tiny_bert_classifier(), MonteCLoRAConfig(rank=4, sample_scaler=sample_scaler, modules_to_save=["classifier"])
    )
    cast_frozen(model.network, torch.bfloat16)
    return model, MonteCLoRAGuide(model)


def test_frozen_weights_go_to_bf16_and_trainable_ones_stay_fp32():
    model, guide = bf16_model(1e-6)
    for name, parameter in model.network.named_parameters():
        assert parameter.dtype == (torch.float32 if parameter.requires_grad else torch.bfloat16), name
    assert all(p.dtype == torch.float32 for p in guide.parameters())


def test_a_1e_minus_6_perturbation_survives_bf16_autocast():
    model, guide = bf16_model(1e-6)
    batch = without_labels(classification_batch())
    with autocast("cpu", torch.bfloat16):
        guide_trace = poutine.trace(guide).get_trace()
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(**batch)
        assert trace.nodes["_RETURN"]["value"].dtype == torch.bfloat16  # the base ran in bf16
    for path, adapter in model.adapters().items():
        A = trace.nodes[f"{path}.lora_A"]["value"]
        assert A.dtype == torch.float32
        expected = lora_perturbation(
            trace.nodes[f"{path}.covariance"]["value"],
            trace.nodes[f"{path}.mixture_weights"]["value"],
            trace.nodes[f"{path}.lora_A.noise"]["value"],
            1e-6,
        )
        delta = A - adapter.lora_A_mean
        # exact up to fp32's rounding of A = M + delta (|M| < 1: an absolute error below 1.2e-7)
        torch.testing.assert_close(delta, expected, rtol=0, atol=1.2e-7 * adapter.lora_A_mean.abs().max().item())
        assert (delta - expected).norm() < 0.05 * expected.norm()
        # what fp32 avoids: in fp32 nearly every entry moves; added in bf16, nearly none would
        assert (delta != 0).float().mean() > 0.95
        naive = adapter.lora_A_mean.bfloat16() + expected.bfloat16()
        assert (naive != adapter.lora_A_mean.bfloat16()).float().mean() < 0.05


def test_svi_under_bf16_autocast_trains_and_reaches_the_guide():
    model, guide = bf16_model(1e-2)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (32, 8), generator=generator)
    labels = (ids[:, 0] > VOCAB // 2).long()
    data = [
        {"input_ids": ids[i : i + 8], "attention_mask": torch.ones(8, 8, dtype=torch.long), "labels": labels[i : i + 8]}
        for i in range(0, 32, 8)
    ]
    model.dataset_size = 32
    result = fit(model, guide, data, epochs=3, learning_rate=1e-2, dtype=torch.bfloat16, progress=False, seed=0)
    assert all(torch.isfinite(torch.tensor(step["loss"])) for step in result.steps)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in guide.parameters())
    assert all(p.dtype == torch.float32 for _, p in model.trainable_parameters())


@pytest.mark.parametrize(
    "name, device, pattern",
    [
        ("fp16", "cpu", r"dtype fp16 needs a CUDA device"),
        ("fp8", "cpu", r"dtype must be one of \['bf16', 'fp16', 'fp32'\], got 'fp8'"),
    ],
)
def test_precisions_a_device_cannot_run_are_refused(name, device, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_precision(name, device)
    model, guide = bf16_model(1e-3)
    model.dataset_size = 8
    with pytest.raises(ValueError, match=r"dtype fp16 needs a CUDA device"):
        fit(model, guide, [classification_batch()], dtype=torch.float16, progress=False)


def _one_step_gradients(checkpointing: bool):
    from conftest import capital_rows, tiny_llama, word_tokenizer

    from pyro_monteclora.data.causal_lm import causal_lm_loader
    from pyro_monteclora.data.instructions import InstructionData

    model = MonteCLoRAModel(
        tiny_llama(initializer_range=0.2),
        MonteCLoRAConfig(rank=4, target_modules=["q_proj", "v_proj"], sample_scaler=0.5),
    )
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)
    guide = MonteCLoRAGuide(model)
    if checkpointing:
        model.enable_gradient_checkpointing()
        assert model.gradient_checkpointing
    rows = capital_rows()
    data = InstructionData([r["question"] for r in rows], [r["answer"] for r in rows])
    loader = causal_lm_loader(data, word_tokenizer(), batch_size=8, max_length=32)
    fit(model, guide, loader, epochs=1, learning_rate=1e-9, max_grad_norm=None, seed=3, progress=False)
    named = dict(model.trainable_parameters())
    named.update({f"guide.{n}": p for n, p in guide.named_parameters()})
    return {name: p.grad.clone() for name, p in named.items()}


def test_gradient_checkpointing_gives_the_same_gradients_with_the_same_draws():
    plain, checkpointed = _one_step_gradients(False), _one_step_gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for n, g in plain.items() if n.startswith("guide."))


def test_gradient_checkpointing_refuses_several_particles():
    model, guide = bf16_model(1e-3)
    model.enable_gradient_checkpointing()
    model.dataset_size = 8
    with pytest.raises(ValueError, match=r"gradient checkpointing needs num_particles=1"):
        fit(model, guide, [classification_batch()], num_particles=2, progress=False)


def _bf16_layer_outputs(sample_scaler: float, under_autocast: bool):
    """A bf16 adapted layer's outputs with and without a perturbation s Z of A, the exact (fp32)
    outputs from the same bf16 base output, and that base output."""
    from pyro_monteclora.nn.layers import MonteCLoRALinear

    torch.manual_seed(0)  # the base's and M's initialisation
    generator = torch.Generator().manual_seed(0)
    base = torch.nn.Linear(64, 128).requires_grad_(False)
    layer = MonteCLoRALinear(base, MonteCLoRAConfig(rank=4), "layer")
    with torch.no_grad():
        layer.lora_B.normal_(0, 0.5, generator=generator)
    x = torch.randn(256, 64, generator=generator)
    if not under_autocast:
        cast_frozen(layer, torch.bfloat16)
        x = x.bfloat16()
    M, B = layer.lora_A_mean.detach(), layer.lora_B.detach()
    A = M + sample_scaler * torch.randn(M.shape, generator=generator)
    outputs = []
    with torch.no_grad(), autocast("cpu", torch.bfloat16 if under_autocast else torch.float32):
        for factor in (M, A):
            layer.hold_factors(factor, B)
            outputs.append(layer(x))
        result = layer.base_layer(x)
    assert result.dtype == outputs[0].dtype == torch.bfloat16  # what the next layer expects
    exact = [result.float() + torch.nn.functional.linear(x.float() @ factor.T, B * layer.scaling) for factor in (M, A)]
    return outputs, exact, result


def _bf16_spacing(y: torch.Tensor) -> torch.Tensor:
    """The distance between neighbouring bf16 numbers at |y|: 2^(floor(log2 |y|) - 7)."""
    return torch.exp2(torch.floor(torch.log2(y.abs())) - 7)


@pytest.mark.parametrize("under_autocast", [False, True])
@pytest.mark.parametrize("sample_scaler", [1e-6, 1e-5, 1e-4, 1e-2])
def test_a_bf16_output_moves_by_one_rounding_of_the_exact_perturbation(sample_scaler, under_autocast):
    # The layer's output is bf16, so its perturbation dy survives only as whole bf16 steps: rounded
    # once (the update kept in fp32 until the residual add), an output moves exactly when y + dy
    # and y round differently, which happens with probability min(1, |dy| / spacing(y)).
    (plain, perturbed), (exact_plain, exact), result = _bf16_layer_outputs(sample_scaler, under_autocast)
    torch.testing.assert_close(plain, exact_plain.bfloat16(), rtol=0, atol=0)
    torch.testing.assert_close(perturbed, exact.bfloat16(), rtol=0, atol=0)
    moved = perturbed != plain
    dy = (exact - exact_plain).abs()
    spacing = torch.maximum(_bf16_spacing(exact), _bf16_spacing(exact_plain))
    assert moved[dy > spacing].all()  # a perturbation over one bf16 step always shows
    assert moved[dy > 2**-7 * torch.maximum(exact.abs(), exact_plain.abs())].all()  # the docs' bound
    predicted = (dy / spacing).clamp(max=1).mean().item()
    observed = moved.float().mean().item()
    assert abs(observed - predicted) < 0.1 * predicted + 3 * (predicted / moved.numel()) ** 0.5
    # the numbers MonteCLoRALinear.forward's docstring quotes for this layer
    assert 12 < (dy / exact.abs()).median().item() / sample_scaler < 14
    # and docs/method.rst's table: (one rounding, two roundings as when the update was cast first)
    documented = {1e-6: (0.011, 0.004), 1e-4: (0.37, 0.30), 1e-2: (0.99, 0.98)}.get(sample_scaler)
    if documented is not None:

        def rounded_twice(exact_output):
            return result + (exact_output - result.float()).bfloat16()

        twice = (rounded_twice(exact) != rounded_twice(exact_plain)).float().mean().item()
        assert abs(observed - documented[0]) < 0.1 * documented[0]
        assert abs(twice - documented[1]) < 0.12 * documented[1]
        assert twice < observed
