"""Multiple choice: answer forms, bad records, option scores against a hand computation, the
posterior predictive over options."""

import json

import pytest
import torch
from conftest import tiny_llama, word_tokenizer

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.data.causal_lm import encode_prompt
from pyro_monteclora.data.multiple_choice import (
    MultipleChoiceData,
    load_multiple_choice_file,
    multiple_choice_loader,
    parse_answer,
)
from pyro_monteclora.data.records import DataError
from pyro_monteclora.evaluation.language_model import predict_multiple_choice

CHOICES = ["paris", "lima", "tokyo"]


@pytest.mark.parametrize(
    "value, index",
    [
        (0, 0),
        (2, 2),
        ("B", 1),
        ("c", 2),
        ("1", 1),
        ("answer1", 0),
        ("option3", 2),
        ("Solution2", 1),
        ("ending1", 0),
        ("tokyo", 2),
    ],
)
def test_answer_forms(value, index):
    assert parse_answer(value, CHOICES, "here") == index


@pytest.mark.parametrize("value", [3, -1, "D", "answer4", "answer0", "london", True, None, 1.5])
def test_answers_outside_the_choices_name_the_place_and_the_allowed_values(value):
    with pytest.raises(
        DataError,
        match=r"^f\.jsonl line 7: answer .* is not one of the 3 choices; "
        r"use an index 0\.\.2, a letter A\.\.C, answer1\.\.answer3",
    ):
        parse_answer(value, CHOICES, "f.jsonl line 7")


@pytest.mark.parametrize(
    "row, pattern",
    [
        ({"choices": CHOICES, "answer": 0}, r"line 2: field 'question' \(the question\) is missing"),
        (
            {"question": "q", "choices": ["only"], "answer": 0},
            r"line 2: field 'choices' must be a list of at least two",
        ),
        ({"question": "q", "choices": CHOICES}, r"line 2: no 'answer' field"),
        ({"question": "q", "choices": CHOICES, "answer": "E"}, r"line 2: answer 'E' is not one of the 3 choices"),
    ],
)
def test_bad_records_stop_with_the_file_and_line(tmp_path, row, pattern):
    path = tmp_path / "mc.jsonl"
    good = {"question": "what is the capital of peru ?", "choices": CHOICES, "answer": "B"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError, match=pattern):
        load_multiple_choice_file(path)
    assert "mc.jsonl" in str(pytest.raises(DataError, load_multiple_choice_file, path).value)


def test_arc_style_choices_are_read():
    from pyro_monteclora.data.multiple_choice import records_to_multiple_choice

    data = records_to_multiple_choice(
        [("record 1", {"question": "q", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answer": "B"})], "arc"
    )
    assert data.choices == [["x", "y"]] and data.answers == [1]


def adapted(sample_scaler):
    model = MonteCLoRAModel(
        tiny_llama(initializer_range=0.2),
        MonteCLoRAConfig(rank=4, target_modules=["q_proj", "v_proj"], sample_scaler=sample_scaler),
    )
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)
    return model, MonteCLoRAGuide(model)


def questions():
    return MultipleChoiceData(
        ["what is the capital of peru ?", "what is the capital of japan ?", "is the capital of india delhi ?"],
        [CHOICES, ["tokyo", "cairo", "madrid", "lima"], ["yes", "no"]],
        [1, 0, 0],
        "mc",
    )


def test_option_probabilities_are_a_softmax_of_hand_computed_log_likelihoods():
    tokenizer = word_tokenizer()
    model, guide = adapted(sample_scaler=0.0)
    data = questions()
    output = predict_multiple_choice(model, guide, multiple_choice_loader(data, tokenizer, 2, 64), num_samples=0)
    assert output.probs.shape == (3, 4)
    for q in range(3):
        prompt = encode_prompt(tokenizer, data.questions[q])
        scores = []
        for choice in data.choices[q]:
            option = tokenizer(choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + option])
            with torch.no_grad(), model.mean_adapters():
                log_probs = model(input_ids=ids).log_softmax(-1)[0]
            scores.append(sum(log_probs[len(prompt) - 1 + t, token] for t, token in enumerate(option)))
        expected = torch.stack(scores).softmax(-1)
        torch.testing.assert_close(output.probs[q, : len(scores)], expected.float(), rtol=1e-4, atol=1e-6)
        assert torch.all(output.probs[q, len(scores) :] == 0)  # a question with fewer options
    assert output.labels.tolist() == [1, 0, 0]


def test_the_predictive_over_options_spreads_with_the_sample_scaler():
    tokenizer = word_tokenizer()
    loader = multiple_choice_loader(questions(), tokenizer, 3, 64)
    model, guide = adapted(sample_scaler=0.0)
    mean = predict_multiple_choice(model, guide, loader, num_samples=0)
    same = predict_multiple_choice(model, guide, loader, num_samples=4)
    torch.testing.assert_close(same.probs, mean.probs, rtol=1e-5, atol=1e-6)
    assert same.mutual_information.max() < 1e-6
    model, guide = adapted(sample_scaler=3.0)
    spread = predict_multiple_choice(model, guide, loader, num_samples=4)
    assert spread.mutual_information.min() > 1e-4
    torch.testing.assert_close(spread.probs.sum(-1), torch.ones(3))


def test_all_options_of_a_question_share_one_draw_per_sample():
    model, guide = adapted(sample_scaler=1.0)
    calls = []

    class Counting(torch.nn.Module):  # counts guide executions: one per batch and sample
        def __init__(self):
            super().__init__()
            self.guide = guide

        def forward(self, *args, **kwargs):
            calls.append(1)
            return self.guide(*args, **kwargs)

    loader = multiple_choice_loader(questions(), word_tokenizer(), 2, 64)  # two batches
    predict_multiple_choice(model, Counting(), loader, num_samples=3)
    assert len(calls) == 2 * 3  # and every batch holds whole questions


def test_non_ascii_letters_and_many_choices_are_errors_not_crashes():
    with pytest.raises(DataError, match=r"answer 'É' is not one of the 3 choices"):
        parse_answer("É", CHOICES, "here")
    many = [f"option text {i}" for i in range(30)]
    assert parse_answer("answer30", many, "here") == 29
    with pytest.raises(
        DataError, match=r"answer 'answer31' is not one of the 30 choices; use an index 0\.\.29, answer1"
    ):
        parse_answer("answer31", many, "here")
