"""Generation with posterior sampling: answer extraction, majority vote, stacked draws against one
draw at a time, greedy mean-adapter decoding, and the agreement rate."""

import inspect

import pyro
import pytest
import torch
from conftest import tiny_gpt2, tiny_llama, word_tokenizer

from pyro_monteclora import EmptyGuide, MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.data.causal_lm import encode_prompt, pad_batch
from pyro_monteclora.evaluation.generation import (
    extract_answer,
    final_number,
    generate_answers,
    is_correct,
    majority_vote,
    normalize_answer,
)

PROMPTS = ["what is the capital of peru ?", "capital ?", "what is the capital of the capital of japan ?"]


@pytest.mark.parametrize(
    "text, number",
    [
        ("Natalia sold 48/2 = 24 clips.\n#### 72", "72"),
        ("so the answer is 1,234.", "1234"),
        ("x = -3.50", "-3.5"),
        ("7.0 apples", "7"),
        ("no digits", None),
        ("#### 5\nthen 6", "5"),
    ],
)
def test_final_number(text, number):
    assert final_number(text) == number


def test_short_answers_are_normalised_and_compared_the_same_way():
    assert extract_answer("  The Andes!\nmore text", "short") == "andes"
    assert extract_answer("A", "short") == "a" and normalize_answer("an apple") == "apple"
    assert extract_answer("\n\n", "short") is None
    assert is_correct("lima", ["Lima.", "Ciudad de los Reyes"], "short")
    assert not is_correct(None, ["x"], "short") and is_correct("72", ["... #### 72"], "number")
    with pytest.raises(ValueError, match=r"answer_type must be one of \['short', 'number', 'text'\]"):
        extract_answer("x", "regex")


def test_majority_vote_breaks_ties_by_first_seen_and_counts_empty_answers():
    assert majority_vote(["b", "a", "a", "b"]) == ("b", 0.5)
    assert majority_vote(["a", None, None, None]) == ("a", 0.25)
    assert majority_vote([None, None]) == (None, 0.0)


def adapted(network, sample_scaler, targets=("q_proj", "v_proj"), random_B=False):
    model = MonteCLoRAModel(
        network, MonteCLoRAConfig(rank=4, target_modules=list(targets), sample_scaler=sample_scaler, random_B=random_B)
    )
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)
    return model, MonteCLoRAGuide(model)


@pytest.mark.parametrize("random_B", [False, True])
def test_stacked_draws_give_each_group_of_rows_its_own_adapter(random_B):
    model, guide = adapted(tiny_llama(initializer_range=0.2), sample_scaler=1.0, random_B=random_B)
    ids = torch.randint(4, 40, (2, 6))
    with torch.no_grad():
        with model.stacked_adapters(guide, 3) as network:
            stacked = network(input_ids=ids.repeat(3, 1)).logits
            held = {path: adapter.factors() for path, adapter in model.adapters().items()}
        assert all(A.shape[0] == 3 for A, _ in held.values())
        assert all((B.dim() == 3) == random_B for _, B in held.values())
        for k in range(3):
            for path, adapter in model.adapters().items():
                A, B = held[path]
                adapter.hold_factors(A[k], B[k] if random_B else B)
            single = model.network(input_ids=ids).logits
            torch.testing.assert_close(stacked[2 * k : 2 * k + 2], single, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(stacked[:2], stacked[2:4])
    for adapter in model.adapters().values():
        adapter.clear_factors()
    with pytest.raises(ValueError, match=r"cannot be split among 3 stacked adapter samples"):
        with torch.no_grad(), model.stacked_adapters(guide, 3) as network:
            network(input_ids=ids)
    assert all(adapter._factors is None for adapter in model.adapters().values())


def test_mean_adapter_generation_is_greedy_decoding_of_the_mean_model():
    tokenizer = word_tokenizer()
    model, guide = adapted(tiny_llama(initializer_range=0.2), sample_scaler=1.0)
    results = generate_answers(model, guide, tokenizer, PROMPTS, 0, max_new_tokens=4, answer_type="text", batch_size=2)
    for prompt, result in zip(PROMPTS, results):
        ids = torch.tensor([encode_prompt(tokenizer, prompt)])
        with torch.no_grad(), model.mean_adapters():
            out = model.network.generate(
                input_ids=ids, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=2
            )
        assert result.generations == [tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)]
        assert result.agreement == (1.0 if result.answer is not None else 0.0) and result.num_samples == 0


def test_s_batched_samples_match_one_sample_at_a_time_with_left_padding():
    tokenizer = word_tokenizer()
    model, guide = adapted(tiny_llama(initializer_range=0.2), sample_scaler=2.0)
    pyro.set_rng_seed(3)
    together = generate_answers(model, guide, tokenizer, PROMPTS, 4, max_new_tokens=5, answer_type="text", batch_size=3)
    pyro.set_rng_seed(3)
    apart = generate_answers(
        model,
        guide,
        tokenizer,
        PROMPTS,
        4,
        max_new_tokens=5,
        answer_type="text",
        batch_size=3,
        samples_per_pass=1,
    )
    assert [r.generations for r in together] == [r.generations for r in apart]
    # one prompt at a time (no padding; the same four draws after the same seed) agrees with
    # the left-padded batch
    for index, prompt in enumerate(PROMPTS):
        pyro.set_rng_seed(3)
        alone = generate_answers(
            model, guide, tokenizer, [prompt], 4, max_new_tokens=5, answer_type="text", batch_size=1
        )
        assert alone[0].generations == together[index].generations
    assert len({tuple(r.generations) for r in together}) > 1
    assert any(len(set(r.generations)) > 1 for r in together)  # the draws differ


def test_zero_sample_scaler_makes_every_sample_the_mean_and_agreement_one():
    tokenizer = word_tokenizer()
    model, guide = adapted(tiny_llama(initializer_range=0.2), sample_scaler=0.0)
    mean = generate_answers(model, guide, tokenizer, PROMPTS, 0, max_new_tokens=4, answer_type="text")
    sampled = generate_answers(model, guide, tokenizer, PROMPTS, 3, max_new_tokens=4, answer_type="text")
    for m, s in zip(mean, sampled):
        assert s.generations == m.generations * 3 and s.num_samples == 3
        assert s.agreement == (1.0 if s.answer is not None else 0.0)


def test_references_fill_correct_and_long_prompts_are_cut_with_a_warning():
    tokenizer = word_tokenizer(chat_template=True)  # "<s> capital ? </s> answer" is 5 tokens
    model, guide = adapted(tiny_llama(initializer_range=0.2), sample_scaler=0.5)
    with pytest.warns(UserWarning, match=r"2 of 3 prompts were longer than max_length - max_new_tokens = 6"):
        results = generate_answers(
            model, guide, tokenizer, PROMPTS, 2, max_new_tokens=4, max_length=10, references=[["lima"], None, ["tokyo"]]
        )
    assert results[1].correct is None and isinstance(results[0].correct, bool)
    assert results[0].correct == (results[0].answer == "lima")


def test_the_cut_prompt_warning_points_at_the_caller():
    model, guide = adapted(tiny_llama(), sample_scaler=0.0)
    with pytest.warns(UserWarning, match="cut from the left") as caught:
        generate_answers(model, guide, word_tokenizer(), PROMPTS[:1], 0, max_new_tokens=2, max_length=5)
    assert [w.filename for w in caught if "cut from the left" in str(w.message)] == [__file__]


def test_the_earlier_order_still_works_with_a_future_warning_at_the_caller():
    tokenizer = word_tokenizer()
    model, guide = adapted(tiny_llama(), sample_scaler=1.0, random_B=True)
    pyro.set_rng_seed(5)
    today = generate_answers(model, guide, tokenizer, PROMPTS[:2], 3, max_new_tokens=3, answer_type="text")
    for old_call in (
        lambda: generate_answers(model, tokenizer, PROMPTS[:2], 3, guide, max_new_tokens=3, answer_type="text"),
        lambda: generate_answers(
            model, tokenizer, PROMPTS[:2], num_samples=3, guide=guide, max_new_tokens=3, answer_type="text"
        ),
    ):
        pyro.set_rng_seed(5)
        with pytest.warns(
            FutureWarning, match=r"generate_answers\(model, guide, tokenizer, prompts, num_samples\)"
        ) as caught:
            old = old_call()
        assert [w.filename for w in caught] == [__file__]
        assert [r.generations for r in old] == [r.generations for r in today]
    # the old order without a guide is the mean adapter
    with pytest.warns(FutureWarning):
        mean = generate_answers(model, tokenizer, PROMPTS[:2], max_new_tokens=3, answer_type="text")
    assert [r.generations for r in mean] == [
        r.generations
        for r in generate_answers(model, None, tokenizer, PROMPTS[:2], max_new_tokens=3, answer_type="text")
    ]
    with pytest.raises(TypeError, match="missing required argument: 'prompts'"), pytest.warns(FutureWarning):
        generate_answers(model, tokenizer)
    with pytest.raises(TypeError, match="multiple values for argument 'guide'"), pytest.warns(FutureWarning):
        generate_answers(model, tokenizer, PROMPTS[:2], 3, guide, guide=guide)
    assert "guide" in str(inspect.signature(generate_answers)).split("tokenizer")[0]


def test_gpt2_conv1d_decoders_generate_with_stacked_draws_too():
    tokenizer = word_tokenizer()
    model, guide = adapted(tiny_gpt2(), sample_scaler=1.0, targets=("c_attn",))
    results = generate_answers(model, guide, tokenizer, PROMPTS[:2], 3, max_new_tokens=3, answer_type="text")
    assert all(len(r.generations) == 3 for r in results)


def test_a_lora_guide_decodes_once_with_its_mean():
    tokenizer = word_tokenizer()
    model = MonteCLoRAModel(tiny_llama(), MonteCLoRAConfig(rank=4, target_modules=["q_proj"]), adapter_mode="mean")
    guide = EmptyGuide(model)
    results = generate_answers(model, guide, tokenizer, PROMPTS[:1], 5, max_new_tokens=2)
    assert results[0].num_samples == 0 and len(results[0].generations) == 1
    with pytest.raises(ValueError, match=r"mean adapters \(LoRA\), or no guide, has no posterior"):
        with model.stacked_adapters(guide, 2):
            pass


def test_pad_batch_left_and_right():
    batch = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    right = pad_batch([[5, 6, 7], [8]], pad_id=0, labels=[[-100, 6, 7], [8]])
    assert right["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
