"""Multiple-choice questions for decoders (PIQA, SIQA, WinoGrande, ARC, OBQA, BoolQ style): records and batches.

Records: ``question`` (text), ``choices`` (a list of texts, or ARC's ``{"text": [...]}``) and
``answer``: a 0-based index, a letter (``"B"``), a digit string, LLM-Adapters' ``"answer2"`` /
``"option2"`` / ``"solution2"`` / ``"ending2"`` (1-based), or the text of one choice.
:func:`multiple_choice_loader` puts every option of a question in the same batch, each as the
response to the question (prompt labels ``-100``), so that
:func:`~pyro_monteclora.evaluation.language_model.predict_multiple_choice` can score them.

>>> parse_answer("c", ["x", "y", "z"], "f.jsonl line 1")
2
>>> parse_answer("answer1", ["x", "y"], "f.jsonl line 1")
0
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from typing import List, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset

from pyro_monteclora.data.causal_lm import encode_prompt, pad_batch
from pyro_monteclora.data.errors import DataError
from pyro_monteclora.data.files import read_located_records
from pyro_monteclora.hf_defaults import pad_token_id
from pyro_monteclora.util import IGNORE_INDEX

__all__ = [
    "MultipleChoiceData",
    "load_multiple_choice_file",
    "records_to_multiple_choice",
    "parse_answer",
    "multiple_choice_loader",
]

_NUMBERED = re.compile(r"^(?:answer|option|solution|ending)\s*([0-9]{1,9})$", re.IGNORECASE)


@dataclass
class MultipleChoiceData(Dataset):
    """Questions, their options and (optionally) the index of the right option."""

    questions: List[str]
    choices: List[List[str]]
    answers: Optional[List[int]] = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> dict:
        return {"index": index}

    def subset(self, count: int) -> "MultipleChoiceData":
        """The first ``count`` questions."""
        return MultipleChoiceData(
            self.questions[:count],
            self.choices[:count],
            None if self.answers is None else self.answers[:count],
            self.source,
        )


def parse_answer(value, choices: List[str], where: str) -> int:
    """The 0-based index that ``value`` names among ``choices`` (see the module for the forms).

    :raises DataError: naming ``where`` and the allowed values when it names none of them.
    """
    count = len(choices)
    letters = string.ascii_uppercase[:count]
    allowed = (
        f"an index 0..{count - 1}, a letter A..{letters[-1]}, " if count <= 26 else f"an index 0..{count - 1}, "
    ) + f"answer1..answer{count} or one choice's text"
    index = None
    if isinstance(value, bool):
        index = None
    elif isinstance(value, int):
        index = value
    elif isinstance(value, float) and value.is_integer():  # 1.0 is the index 1
        index = int(value)
    elif isinstance(value, str):
        text = value.strip()
        numbered = _NUMBERED.match(text)
        if len(text) == 1 and text.upper() in string.ascii_uppercase:
            index = string.ascii_uppercase.index(text.upper())
        elif text.isascii() and text.isdigit() and len(text) < 10:  # not "²", which int() refuses
            index = int(text)
        elif numbered:
            index = int(numbered.group(1)) - 1
        elif text in choices:
            index = choices.index(text)
    if index is None or not 0 <= index < count:
        raise DataError(f"{where}: answer {value!r} is not one of the {count} choices; use {allowed}")
    return index


def records_to_multiple_choice(
    rows,
    source: str,
    question_column: str = "question",
    choices_column: str = "choices",
    answer_column: str = "answer",
    require_answer: bool = True,
) -> MultipleChoiceData:
    """Validate located rows (``(place, record)``) into :class:`MultipleChoiceData`.

    :raises DataError: naming the file and line of a record without its question, with fewer than
        two choices, or with an answer outside its choices.
    """
    questions, all_choices, answers = [], [], []
    for place, row in rows:
        where = f"{source} {place}"
        question = row.get(question_column)
        if not isinstance(question, str) or not question.strip():
            raise DataError(
                f"{where}: field {question_column!r} (the question) is missing or empty; found {sorted(row)}"
            )
        choices = row.get(choices_column)
        if isinstance(choices, dict):  # ARC on the hub: {"text": [...], "label": [...]}
            choices = choices.get("text")
        if not (
            isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c.strip() for c in choices)
        ):
            raise DataError(f"{where}: field {choices_column!r} must be a list of at least two non-empty texts")
        questions.append(question)
        all_choices.append(choices)
        if row.get(answer_column) is None:
            if require_answer:
                raise DataError(f"{where}: no {answer_column!r} field (the right choice)")
            answers.append(None)
        else:
            answers.append(parse_answer(row[answer_column], choices, where))
    if not questions:
        raise DataError(f"{source} has no records")
    return MultipleChoiceData(questions, all_choices, None if any(a is None for a in answers) else answers, source)


def load_multiple_choice_file(path: Union[str, os.PathLike], **columns) -> MultipleChoiceData:
    """Read a json/jsonl/csv/tsv/parquet file of multiple-choice records (see the module)."""
    return records_to_multiple_choice(read_located_records(path), str(path), **columns)


class _ChoiceCollator:
    """All options of each question in the batch as rows: ``input_ids``, ``attention_mask``,
    ``target_ids`` (``-100`` on the prompt), ``option_question``/``option_slot`` (where each row's
    score goes), ``num_questions``, and ``labels`` (the answers) when known."""

    def __init__(self, data: MultipleChoiceData, tokenizer, max_length: int):
        self.data, self.tokenizer, self.max_length = data, tokenizer, max_length
        self.pad_id = pad_token_id(tokenizer)

    def __call__(self, items: List[dict]) -> dict:
        sequences, targets, question_of, slot_of = [], [], [], []
        for local, item in enumerate(items):
            index = item["index"]
            prompt = encode_prompt(self.tokenizer, self.data.questions[index])
            for slot, choice in enumerate(self.data.choices[index]):
                option = self.tokenizer(choice, add_special_tokens=False)["input_ids"][: self.max_length - 1]
                kept = prompt[max(0, len(prompt) - (self.max_length - len(option))) :]
                sequences.append(kept + option)
                targets.append([IGNORE_INDEX] * len(kept) + option)
                question_of.append(local)
                slot_of.append(slot)
        batch = pad_batch(sequences, self.pad_id, labels=targets)
        batch["target_ids"] = batch.pop("labels")
        batch["option_question"] = torch.tensor(question_of)
        batch["option_slot"] = torch.tensor(slot_of)
        batch["num_questions"] = torch.tensor(len(items))
        if self.data.answers is not None:
            batch["labels"] = torch.tensor([self.data.answers[item["index"]] for item in items])
        return batch


def multiple_choice_loader(
    data: MultipleChoiceData, tokenizer, questions_per_batch: int = 4, max_length: int = 256
) -> DataLoader:
    """Batches of whole questions (every option of a question in the same batch)."""
    if not isinstance(questions_per_batch, int) or questions_per_batch < 1:
        raise ValueError(f"questions_per_batch must be an integer >= 1, got {questions_per_batch!r}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    return DataLoader(data, batch_size=questions_per_batch, collate_fn=_ChoiceCollator(data, tokenizer, max_length))
