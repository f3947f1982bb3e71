"""(prompt, response) records: schemas, overrides, reference answers, prompts, and bad records."""

import pytest
from conftest import word_tokenizer
from test_cli import write_jsonl

from pyro_monteclora.data.instructions import (
    ALPACA_INPUT_TEMPLATE,
    ALPACA_TEMPLATE,
    format_prompt,
    load_instruction_file,
)
from pyro_monteclora.data.records import DataError


def test_the_three_schemas_and_their_reference_answers(tmp_path):
    alpaca = load_instruction_file(
        write_jsonl(
            tmp_path / "a.jsonl",
            [
                {"instruction": "Add.", "input": "2 and 3", "output": "5", "answer": "5"},
                {"instruction": "Say hi.", "input": "", "output": "hi"},
            ],
        )
    )
    assert alpaca.prompts == ["Add.", "Say hi."] and alpaca.inputs == ["2 and 3", ""]
    assert alpaca.responses == ["5", "hi"] and alpaca.references == [["5"], None]
    gsm = load_instruction_file(
        write_jsonl(tmp_path / "g.jsonl", [{"question": "3 + 4?", "answer": "3 + 4 = 7\n#### 7"}])
    )
    assert gsm.prompts == ["3 + 4?"] and gsm.responses == ["3 + 4 = 7\n#### 7"]
    trivia = load_instruction_file(
        write_jsonl(
            tmp_path / "t.jsonl",
            [{"question": "Capital of Peru?", "answer": "Lima", "answers": ["Lima", "Ciudad de los Reyes"]}],
        )
    )
    assert trivia.references == [["Lima", "Ciudad de los Reyes"]]
    plain = load_instruction_file(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x", "response": "y"}]))
    assert (plain.prompts, plain.responses) == (["x"], ["y"])


def test_columns_given_by_name_override_the_schema(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"q": "why?", "a": "because", "question": "ignored"}])
    data = load_instruction_file(path, prompt_column="q", response_column="a")
    assert (data.prompts, data.responses) == (["why?"], ["because"])
    prompts_only = load_instruction_file(
        write_jsonl(tmp_path / "p.jsonl", [{"question": "why?"}]), require_response=False
    )
    assert prompts_only.responses == [None]


@pytest.mark.parametrize(
    "rows, pattern",
    [
        (
            [{"question": "a", "answer": "b"}, {"answer": "c"}],
            r"bad\.jsonl line 2: no prompt field; expected one of \['instruction', 'question', 'prompt', 'problem'\]",
        ),
        (
            [{"instruction": "a", "output": "b"}, {"instruction": "c"}],
            r"bad\.jsonl line 2: no 'output' field \(the response\).*--response-column",
        ),
        ([{"question": "   ", "answer": "b"}], r"bad\.jsonl line 1: field 'question' is empty"),
        ([{"question": 3, "answer": "b"}], r"bad\.jsonl line 1: field 'question' must be a string, got int"),
        ([{"question": "a", "answer": "b", "answers": []}], r"line 1: field 'answers' must be a non-empty list"),
    ],
)
def test_bad_records_name_the_file_and_line(tmp_path, rows, pattern):
    with pytest.raises(DataError, match=pattern):
        load_instruction_file(write_jsonl(tmp_path / "bad.jsonl", rows))


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"question": "a", "answer": "b"}\n\n\n{"question": "c"}\n')
    with pytest.raises(DataError, match=r"gaps\.jsonl line 4: no 'answer' field"):
        load_instruction_file(path)


def test_prompts_use_the_chat_template_when_there_is_one_else_alpaca():
    plain = word_tokenizer()
    assert format_prompt(plain, "what is it") == ALPACA_TEMPLATE.format(instruction="what is it")
    assert format_prompt(plain, "add", "2 3") == ALPACA_INPUT_TEMPLATE.format(instruction="add", input="2 3")
    chat = word_tokenizer(chat_template=True)
    assert format_prompt(chat, "what is it") == "<s> what is it </s> answer"
    assert format_prompt(chat, "add", "2 3") == "<s> add\n\n2 3 </s> answer"


def test_numeric_answers_and_one_named_column_at_a_time(tmp_path):
    numeric = load_instruction_file(write_jsonl(tmp_path / "n.jsonl", [{"question": "2+2?", "answer": 4}]))
    assert numeric.responses == ["4"] and numeric.references == [["4"]]
    alpaca = write_jsonl(
        tmp_path / "a.jsonl", [{"instruction": "Add.", "input": "2 and 3", "output": "5", "rationale": "2 + 3 = 5"}]
    )
    named = load_instruction_file(alpaca, prompt_column="instruction")  # the response stays "output"
    assert (named.prompts, named.inputs, named.responses) == (["Add."], ["2 and 3"], ["5"])
    other = load_instruction_file(alpaca, response_column="rationale")  # the prompt stays Alpaca's
    assert (other.prompts, other.inputs, other.responses) == (["Add."], ["2 and 3"], ["2 + 3 = 5"])
