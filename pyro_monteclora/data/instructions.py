"""(prompt, response) data for decoders: the Alpaca, LLM-Adapters and GSM8k schemas, and prompts.

Three schemas are recognised from a record's fields (the first that fits wins), and
``prompt_column`` / ``response_column`` override them:

* Alpaca and LLM-Adapters' ``commonsense_15k`` / ``math_10k``: the prompt is ``instruction``
  (with ``input`` when present), the response ``output``;
* GSM8k and question answering: ``question`` -> ``answer``;
* plain: ``prompt`` -> ``response``;
* code instructions in Magicoder-OSS-Instruct's schema (the paper's code data): ``problem`` ->
  ``solution``.

A record may also carry reference answers for evaluation: ``answers`` (a list of accepted
answers, for example aliases) or ``answer`` (LLM-Adapters' short answer; in GSM8k the worked
solution, whose final number is the answer).

:func:`format_prompt` renders a prompt with the tokenizer's chat template when it has one (one user
turn, then the assistant's turn is opened), else with the Alpaca template that LLM-Adapters used.

>>> data = records_to_instructions([("line 1", {"question": "2+2?", "answer": "4"})], "qa.jsonl")
>>> data.prompts, data.responses, data.references
(['2+2?'], ['4'], [['4']])
>>> records_to_instructions([("line 1", {"problem": "Add a and b.", "solution": "a + b"})], "code.jsonl").responses
['a + b']
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from torch.utils.data import Dataset

from pyro_monteclora.data.errors import DataError
from pyro_monteclora.data.files import read_located_records

__all__ = [
    "InstructionData",
    "records_to_instructions",
    "load_instruction_file",
    "format_prompt",
    "SCHEMAS",
    "ALPACA_TEMPLATE",
    "ALPACA_INPUT_TEMPLATE",
]

#: (name, prompt field, response field), tried in this order
SCHEMAS = (
    ("alpaca", "instruction", "output"),
    ("question-answer", "question", "answer"),
    ("prompt-response", "prompt", "response"),
    ("magicoder", "problem", "solution"),
)
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)
ALPACA_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides "
    "further context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)


@dataclass
class InstructionData(Dataset):
    """Prompts (with an optional ``input`` each), their responses and reference answers.

    :ivar prompts: the instruction or question of each example.
    :ivar responses: the target text (``None`` entries where a file has prompts only).
    :ivar inputs: Alpaca's ``input`` field ("" where absent).
    :ivar references: accepted answers per example (for generation's exact match), or ``None``.
    """

    prompts: List[str]
    responses: List[Optional[str]]
    inputs: List[str] = field(default_factory=list)
    references: List[Optional[List[str]]] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        n = len(self.prompts)
        self.inputs = self.inputs or [""] * n
        self.references = self.references or [None] * n
        if not (len(self.responses) == len(self.inputs) == len(self.references) == n):
            raise ValueError("prompts, responses, inputs and references must have one entry per example")

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict:
        return {
            "index": index,
            "prompt": self.prompts[index],
            "input": self.inputs[index],
            "response": self.responses[index],
        }

    def subset(self, count: int) -> "InstructionData":
        """The first ``count`` examples."""
        return InstructionData(
            self.prompts[:count], self.responses[:count], self.inputs[:count], self.references[:count], self.source
        )


def _text(value, where: str, name: str, numbers: bool = False) -> str:
    if numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # a numeric answer, as GSM8k-style files may hold
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {name!r} is empty")
    return value


def _references(row: dict, where: str) -> Optional[List[str]]:
    answers = row.get("answers")
    if answers is not None:
        if isinstance(answers, str):
            answers = [answers]
        if not (isinstance(answers, list) and answers and all(isinstance(a, (str, int, float)) for a in answers)):
            raise DataError(f"{where}: field 'answers' must be a non-empty list of strings")
        return [str(a) for a in answers]
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return [str(answer)]
    if isinstance(answer, str) and answer.strip():
        return [answer]
    return None


def _columns(row: dict, where: str, prompt_column: Optional[str], response_column: Optional[str]):
    """(prompt field, response field, whether Alpaca's ``input`` goes with the prompt): the
    record's schema, with a named column replacing only its own part."""
    schema = next(((p, r) for _, p, r in SCHEMAS if p in row), None)
    if schema is None and prompt_column is None:
        raise DataError(
            f"{where}: no prompt field; expected one of "
            f"{[p for _, p, _ in SCHEMAS]} (or pass --prompt-column), found {sorted(row)}"
        )
    prompt_field = prompt_column or schema[0]
    response_field = response_column or (schema[1] if schema is not None else "response")
    return prompt_field, response_field, prompt_field == "instruction"


def records_to_instructions(
    rows: Sequence[Tuple[str, dict]],
    source: str,
    prompt_column: Optional[str] = None,
    response_column: Optional[str] = None,
    require_response: bool = True,
) -> InstructionData:
    """Validate located rows (``(place, record)`` pairs, see
    :func:`~pyro_monteclora.data.files.read_located_records`) into :class:`InstructionData`.

    :raises DataError: naming the file and line of the first record without its prompt (or,
        with ``require_response``, its response) field, or with an empty or non-text one.
    """
    prompts, responses, inputs, references = [], [], [], []
    for place, row in rows:
        where = f"{source} {place}"
        prompt_field, response_field, has_input = _columns(row, where, prompt_column, response_column)
        if prompt_field not in row:
            raise DataError(f"{where}: no {prompt_field!r} field (the prompt); found {sorted(row)}")
        prompts.append(_text(row[prompt_field], where, prompt_field))
        extra = row.get("input", "") if has_input else ""
        if extra is None:
            extra = ""
        if not isinstance(extra, str):
            raise DataError(f"{where}: field 'input' must be a string, got {type(extra).__name__}")
        inputs.append(extra)
        if response_field in row and row[response_field] is not None:
            responses.append(_text(row[response_field], where, response_field, numbers=True))
        elif require_response:
            raise DataError(
                f"{where}: no {response_field!r} field (the response); found {sorted(row)}; "
                f"pass --response-column to name it"
            )
        else:
            responses.append(None)
        references.append(_references(row, where))
    if not prompts:
        raise DataError(f"{source} has no records")
    return InstructionData(prompts, responses, inputs, references, source)


def load_instruction_file(
    path: Union[str, os.PathLike],
    prompt_column: Optional[str] = None,
    response_column: Optional[str] = None,
    require_response: bool = True,
) -> InstructionData:
    """Read a json/jsonl/csv/tsv/parquet file of (prompt, response) records (see the module)."""
    return records_to_instructions(
        read_located_records(path), str(Path(path)), prompt_column, response_column, require_response
    )


def format_prompt(tokenizer, prompt: str, input_text: str = "") -> str:
    """The text the model sees before its response.

    With a chat template: one user turn holding ``prompt`` (and ``input_text`` after a blank line),
    then the assistant's turn opened (``add_generation_prompt=True``). Without one: the Alpaca
    template (:data:`ALPACA_TEMPLATE`, or :data:`ALPACA_INPUT_TEMPLATE` when there is an input).
    """
    if getattr(tokenizer, "chat_template", None):
        content = f"{prompt}\n\n{input_text}" if input_text else prompt
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    if input_text:
        return ALPACA_INPUT_TEMPLATE.format(instruction=prompt, input=input_text)
    return ALPACA_TEMPLATE.format(instruction=prompt)
