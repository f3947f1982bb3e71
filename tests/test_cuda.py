"""The library on a CUDA device (skipped cleanly without one): SVI in fp32, bf16 and fp16 (with a
gradient scaler), the predictive against the CPU's, and generation with stacked draws."""

import pytest
import torch
from conftest import VOCAB, tiny_bert_classifier, tiny_llama, word_tokenizer

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, fit, predict
from pyro_monteclora.evaluation.generation import generate_answers
from pyro_monteclora.nn.precision import autocast, cast_frozen

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def batches(device, count=4, size=8):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (count * size, 8), generator=generator)
    labels = (ids[:, 0] > VOCAB // 2).long()
    return [
        {
            "input_ids": ids[i : i + size].to(device),
            "attention_mask": torch.ones(size, 8, dtype=torch.long, device=device),
            "labels": labels[i : i + size].to(device),
        }
        for i in range(0, count * size, size)
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_svi_trains_on_cuda_in_each_precision(dtype):
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    model = MonteCLoRAModel(
        tiny_bert_classifier(), MonteCLoRAConfig(rank=4, sample_scaler=1e-2, modules_to_save=["classifier"])
    ).cuda()
    guide = MonteCLoRAGuide(model)
    if dtype != torch.float32:
        cast_frozen(model.network, dtype)
    model.dataset_size = 32
    result = fit(model, guide, batches("cuda"), epochs=8, learning_rate=1e-2, dtype=dtype, progress=False, seed=0)
    losses = [epoch["loss"] for epoch in result.epochs]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    assert all(p.is_cuda and p.dtype == torch.float32 for _, p in model.trainable_parameters())


def test_the_predictive_on_cuda_matches_the_cpu():
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, modules_to_save=["classifier"]))
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)
    guide = MonteCLoRAGuide(model)
    cpu = predict(model, guide, batches("cpu"), num_samples=0)
    model.cuda()
    gpu = predict(model, guide, batches("cuda"), num_samples=0)
    torch.testing.assert_close(gpu.probs, cpu.probs, rtol=1e-4, atol=1e-5)
    with autocast("cuda", torch.bfloat16):
        sampled = predict(model, guide, batches("cuda"), num_samples=4)
    assert sampled.mutual_information.min() >= 0 and torch.isfinite(sampled.probs).all()


def test_generation_with_stacked_draws_on_cuda():
    model = MonteCLoRAModel(
        tiny_llama(initializer_range=0.2),
        MonteCLoRAConfig(rank=4, target_modules=["q_proj", "v_proj"], sample_scaler=1.0),
    ).cuda()
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)
    guide = MonteCLoRAGuide(model)
    results = generate_answers(
        model,
        guide,
        word_tokenizer(),
        ["what is the capital of peru ?", "capital ?"],
        4,
        max_new_tokens=4,
        answer_type="text",
    )
    assert all(len(r.generations) == 4 for r in results)
