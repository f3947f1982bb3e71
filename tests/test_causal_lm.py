"""Causal-LM batches and likelihoods: prompt masking, left truncation, response log-likelihoods,
the data plate's scaling, the predictive's token NLL, and SVI on a tiny Llama."""

import math
import warnings

import pytest
import torch
from conftest import capital_rows, tiny_llama, word_tokenizer
from pyro import poutine

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, fit
from pyro_monteclora.data.causal_lm import causal_lm_loader, encode_pairs, encode_prompt
from pyro_monteclora.data.instructions import InstructionData
from pyro_monteclora.evaluation.language_model import language_model_metrics
from pyro_monteclora.nn.likelihoods import sequence_log_likelihood
from pyro_monteclora.util import IGNORE_INDEX


def capital_data(count=8):
    rows = capital_rows()[:count]
    return InstructionData(
        [r["question"] for r in rows],
        [r["answer"] for r in rows],
        references=[[r["answer"]] for r in rows],
        source="capitals",
    )


def adapted_llama(sample_scaler=0.5, seed=0):
    model = MonteCLoRAModel(
        tiny_llama(seed),
        MonteCLoRAConfig(rank=4, target_modules=["q_proj", "k_proj", "v_proj"], sample_scaler=sample_scaler),
    )
    with torch.no_grad():  # a non-zero B, so that the sampled A changes the outputs
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)
    return model, MonteCLoRAGuide(model)


@pytest.mark.parametrize("chat", [False, True])
def test_labels_cover_the_response_and_its_end_token_only(chat):
    tokenizer = word_tokenizer(chat_template=chat)
    data = capital_data(3)
    encoded = encode_pairs(data, tokenizer, max_length=64)
    for index in range(3):
        prompt = encode_prompt(tokenizer, data.prompts[index])
        ids, labels = encoded[index]["input_ids"], encoded[index]["labels"]
        answer = tokenizer.convert_tokens_to_ids(data.responses[index])
        assert ids == prompt + [answer, tokenizer.eos_token_id]
        assert labels == [IGNORE_INDEX] * len(prompt) + [answer, tokenizer.eos_token_id]
    if not chat:  # without a chat template the prompt starts with bos
        assert encode_prompt(tokenizer, "x")[0] == tokenizer.bos_token_id


def test_long_prompts_are_cut_from_the_left_with_a_count():
    tokenizer = word_tokenizer()
    data = InstructionData(["what is the capital of france ?", "of ?"], ["paris", "lima"])
    full = [encode_prompt(tokenizer, p) for p in data.prompts]
    limit = len(full[1]) + 2  # the short prompt and its response just fit
    with pytest.warns(UserWarning, match=r"1 of 2 prompts were longer than max_length=\d+ .* cut from the left"):
        encoded = encode_pairs(data, tokenizer, max_length=limit)
    long_ids = encoded[0]["input_ids"]
    assert len(long_ids) == limit and long_ids[:-2] == full[0][-(limit - 2) :]
    assert encoded[1]["input_ids"][:-2] == full[1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        encode_pairs(data, tokenizer, max_length=64)  # nothing cut, no warning


def test_sequence_log_likelihood_against_a_loop():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, IGNORE_INDEX], [IGNORE_INDEX, 1, 2, 6, 0]])
    total, tokens = sequence_log_likelihood(logits, labels)
    expected = torch.zeros(2)
    for b in range(2):
        for t in range(4):
            if labels[b, t + 1] != IGNORE_INDEX:
                expected[b] += logits[b, t].log_softmax(-1)[labels[b, t + 1]]
    torch.testing.assert_close(total, expected)
    assert tokens.tolist() == [2, 4]


def test_the_data_plate_scales_the_response_likelihood_to_the_data_set():
    model, guide = adapted_llama()
    loader = causal_lm_loader(capital_data(8), word_tokenizer(), batch_size=4, max_length=32)
    batch = next(iter(loader))
    guide_trace = poutine.trace(guide).get_trace()
    trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(dataset_size=20, **batch)
    trace.compute_log_prob()
    observed = trace.nodes["obs"]
    # the vocabulary projection skipped the prompt positions that carry no loss (logits_to_keep)
    first = int((batch["labels"] != -100).any(0).nonzero()[0])
    assert trace.nodes["_RETURN"]["value"].shape[1] == batch["input_ids"].shape[1] - first + 1
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    logits = poutine.replay(model, trace=guide_trace)(**inputs)
    by_hand, _ = sequence_log_likelihood(logits, batch["labels"])
    assert observed["scale"] == 20 / 4  # log_prob_sum is already scaled by it
    torch.testing.assert_close(observed["log_prob_sum"], by_hand.sum() * 20 / 4, rtol=1e-5, atol=1e-4)


def test_token_nll_of_the_mean_adapter_and_of_the_predictive():
    tokenizer = word_tokenizer()
    model, guide = adapted_llama(sample_scaler=0.0)
    loader = causal_lm_loader(capital_data(8), tokenizer, batch_size=3, max_length=32)
    with torch.no_grad(), model.mean_adapters():
        total = sum(
            sequence_log_likelihood(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]), b["labels"])[0]
            .sum()
            .item()
            for b in loader
        )
    mean = language_model_metrics(model, guide, loader, num_samples=0)
    assert mean["tokens"] == 16  # one answer word + the end token, 8 times
    assert mean["token_nll"] == pytest.approx(-total / 16, rel=1e-5)
    assert mean["perplexity"] == pytest.approx(math.exp(mean["token_nll"]))
    # s = 0: every posterior sample is the mean adapter, so the predictive equals it
    assert language_model_metrics(model, guide, loader, num_samples=3)["token_nll"] == pytest.approx(
        mean["token_nll"], rel=1e-5
    )
    noisy_model, noisy_guide = adapted_llama(sample_scaler=2.0)
    noisy = language_model_metrics(noisy_model, noisy_guide, loader, num_samples=3)
    assert noisy["token_nll"] != pytest.approx(language_model_metrics(noisy_model, noisy_guide, loader, 0)["token_nll"])


def test_svi_on_a_decoder_trains_the_adapters_and_guide_only_and_the_loss_falls():
    pyro_seed = 0
    model = MonteCLoRAModel(
        tiny_llama(initializer_range=0.2),
        MonteCLoRAConfig(rank=4, target_modules=["q_proj", "v_proj"], sample_scaler=0.01),
    )
    guide = MonteCLoRAGuide(model)
    frozen = {n: p.detach().clone() for n, p in model.network.named_parameters() if not p.requires_grad}
    loader = causal_lm_loader(
        capital_data(8), word_tokenizer(), batch_size=4, max_length=32, shuffle=True, seed=pyro_seed
    )
    trainable = {n for n, _ in model.trainable_parameters()}
    assert trainable and all(n.endswith(("lora_A_mean", "lora_B")) for n in trainable)
    assert {n.split(".")[-2] for n in trainable} == {"q_proj", "v_proj"}
    result = fit(
        model,
        guide,
        loader,
        epochs=15,
        learning_rate=2e-2,
        seed=pyro_seed,
        progress=False,
        eval_loader=loader,
        log_every=1,
    )
    # the data term per sequence (two response tokens) and the response-token NLL both fall
    data_terms = [step["nll"] for step in result.steps]
    assert sum(data_terms[-4:]) / 4 < 0.5 * sum(data_terms[:4]) / 4
    token_nll = [epoch["token_nll"] for epoch in result.epochs]
    assert token_nll[-1] < 0.6 * token_nll[0] and token_nll[-1] < math.log(8)
    for name, parameter in model.network.named_parameters():
        if name in frozen:
            assert torch.equal(parameter, frozen[name]), name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for _, p in model.trainable_parameters())
    assert all(p.grad is not None for p in guide.parameters())
