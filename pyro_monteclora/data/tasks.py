"""The paper's tasks: where their data comes from, how it is read, and the metric each reports.

MonteCLoRA's paper evaluates encoders on GLUE and SuperGLUE classification tasks and decoders on
commonsense multiple choice and GSM8k. A :class:`TaskSpec` names one of them for ``--task``:

========================  ==============  ===========================================================
task                      metric          data
========================  ==============  ===========================================================
``rotten-tomatoes``       accuracy        built in, offline (the default)
``mrpc``, ``rte``         accuracy        GLUE (``nyu-mll/glue``) or files of its schema:
                                          ``sentence1``, ``sentence2``, ``label``
``cola``                  Matthews corr.  GLUE, or files with ``sentence``, ``label``
``wic``                   accuracy        SuperGLUE (``aps/super_glue``) or files with ``word``,
                                          ``sentence1``, ``sentence2``, ``label``
``boolq``                 accuracy        SuperGLUE, or files with ``question``, ``passage``, ``label``
``piqa`` ``siqa``         accuracy        files in LLM-Adapters' ``commonsense_15k`` schema:
``winogrande`` ``arc-e``                  ``instruction``, ``input``, ``output``, ``answer``
``arc-c`` ``obqa``
``gsm8k``                 exact match     ``openai/gsm8k`` (``main``) or files with ``question``,
                                          ``answer`` (the final number after ``####``)
========================  ==============  ===========================================================

GLUE and SuperGLUE test splits carry no labels, so their results are on the validation split (as
the paper's). Labels may be the hub's integers, SuperGLUE's original ``true``/``false``, or the label
names below. The commonsense tasks train a decoder on the instruction/output pairs and score each
option of a question (``answer1`` .. ``answerK`` as listed on its ``Answer format:`` line) by its
log-likelihood under the posterior predictive, which gives the accuracy together with an NLL.

>>> get_task("cola").metric, get_task("cola").label_names
('matthews_correlation', ('unacceptable', 'acceptable'))
>>> get_task("wic").normalise_label(True, "wic.jsonl line 1")
'True'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    "TaskSpec",
    "TASKS",
    "get_task",
    "task_names",
    "commonsense_options",
    "commonsense_to_multiple_choice",
    "task_score",
]

KINDS = ("classification", "multiple-choice", "generation")
_ANSWER_FORMAT = re.compile(r"answer format:\s*([A-Za-z0-9_]+(?:\s*/\s*[A-Za-z0-9_]+)+)", re.IGNORECASE)
_TRUE = ("true", "yes")
_FALSE = ("false", "no")


@dataclass(frozen=True)
class TaskSpec:
    """One task: its kind, metric, data source and schema.

    :param kind: ``"classification"`` (an encoder with a classifier head), ``"multiple-choice"``
        (a decoder scoring options) or ``"generation"`` (a decoder's generated answer).
    :param metric: the key of the headline metric in ``metrics.json``.
    :param hub: ``(data set, configuration)`` on the Hugging Face hub, or ``None`` (files only).
    :param evaluation_split: where results come from when the data has no labelled test split.
    :param options: a multiple-choice task's answer options when a question does not list them.
    :param word_column: WiC's target word, prepended to the first sentence as ``"word: sentence"``.
    """

    name: str
    title: str
    kind: str
    metric: str = "accuracy"
    hub: Optional[Tuple[str, Optional[str]]] = None
    text_columns: Tuple[str, ...] = ()
    label_column: str = "label"
    label_names: Tuple[str, ...] = ()
    evaluation_split: str = "test"
    options: Tuple[str, ...] = ()
    word_column: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")

    @property
    def task_type(self) -> str:
        """``sequence-classification`` or ``causal-lm`` (the ``train --task-type`` it needs)."""
        return "sequence-classification" if self.kind == "classification" else "causal-lm"

    @property
    def builtin(self) -> bool:
        """Whether the data ships with the package (no files, no network)."""
        return self.name == "rotten-tomatoes"

    def normalise_label(self, value, where: str, column: Optional[str] = None) -> str:
        """The label name ``value`` stands for: an index, a boolean (``true`` = the second name of
        a yes/no task), or a name (any case).

        :raises DataError: naming ``where`` and the allowed values.
        """
        from pyro_monteclora.data.errors import DataError

        names = self.label_names
        if isinstance(value, bool):
            return names[int(value)]
        if isinstance(value, float) and value.is_integer():  # 1.0 is the label 1
            value = int(value)
        if isinstance(value, int) and 0 <= value < len(names):
            return names[value]
        if isinstance(value, str):
            text = value.strip()
            if text.isascii() and text.isdigit() and int(text) < len(names):  # not "²"
                return names[int(text)]
            for name in names:
                if text.lower() == name.lower():
                    return name
            if names == ("False", "True") and text.lower() in _TRUE + _FALSE:
                return "True" if text.lower() in _TRUE else "False"
        raise DataError(
            f"{where}: label {value!r} in column {column or self.label_column!r} is not one of "
            f"{self.name}'s labels: 0..{len(names) - 1} or {list(names)}"
        )

    def classification_rows(
        self,
        rows: Sequence[dict],
        source: str,
        text_columns: Optional[Sequence[str]] = None,
        label_column: Optional[str] = None,
        start: int = 1,
    ) -> List[dict]:
        """``rows`` with their labels as names and (WiC) the word put before the first text.

        :param text_columns: the columns read as texts (default: the task's);
            ``--text-column`` overrides them.
        :param label_column: the label column (default: the task's); ``--label-column``.
        :param start: the row number of ``rows[0]``, for error messages.
        """
        from pyro_monteclora.data.errors import DataError

        text_columns = list(text_columns or self.text_columns)
        label_column = label_column or self.label_column
        out = []
        for number, row in enumerate(rows, start=start):
            row = dict(row)
            where = f"{source} row {number}"
            if label_column in row and row[label_column] not in (None, -1):
                row[label_column] = self.normalise_label(row[label_column], where, label_column)
            if self.word_column is not None:
                word, first = row.get(self.word_column), row.get(text_columns[0])
                if not isinstance(word, str) or not word.strip():
                    raise DataError(
                        f"{where}: no {self.word_column!r} (the word whose senses are compared); found {sorted(row)}"
                    )
                if isinstance(first, str):
                    row[text_columns[0]] = f"{word.strip()}: {first}"
            out.append(row)
        return out

    def classification_table(
        self,
        table,
        source: str,
        text_columns: Optional[Sequence[str]] = None,
        label_column: Optional[str] = None,
    ):
        """:meth:`classification_rows` over a ``datasets.Dataset``, a batch at a time with
        ``Dataset.map`` (the labels become names, stored as JSON values beside a -1 or a missing
        label)."""
        import datasets

        label_column = label_column or self.label_column
        features = dict(table.features)
        if label_column in features:
            features[label_column] = datasets.Json()
        return table.map(
            self._classification_batch,
            batched=True,
            with_indices=True,
            fn_kwargs={"source": source, "text_columns": text_columns, "label_column": label_column},
            features=datasets.Features(features),
        )

    def _classification_batch(self, batch: dict, indices: List[int], source, text_columns, label_column) -> dict:
        names = list(batch)
        rows = [dict(zip(names, values)) for values in zip(*batch.values())]
        rows = self.classification_rows(
            rows, source, text_columns, label_column, start=indices[0] + 1 if indices else 1
        )
        return {name: [row.get(name) for row in rows] for name in names}


def _glue(name, title, columns, labels, metric="accuracy", config=None, hub="nyu-mll/glue", word=None):
    return TaskSpec(
        name,
        title,
        "classification",
        metric,
        (hub, config or name),
        tuple(columns),
        "label",
        tuple(labels),
        "validation",
        word_column=word,
    )


def _commonsense(name, title, options):
    return TaskSpec(name, title, "multiple-choice", "accuracy", None, evaluation_split="test", options=tuple(options))


TASKS: Dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "rotten-tomatoes",
            "Rotten Tomatoes critic sentences (built in)",
            "classification",
            label_names=("rotten", "fresh"),
        ),
        _glue("mrpc", "GLUE MRPC (paraphrase)", ("sentence1", "sentence2"), ("not_equivalent", "equivalent")),
        _glue(
            "cola",
            "GLUE CoLA (acceptability)",
            ("sentence",),
            ("unacceptable", "acceptable"),
            metric="matthews_correlation",
        ),
        _glue("rte", "GLUE RTE (entailment)", ("sentence1", "sentence2"), ("entailment", "not_entailment")),
        _glue(
            "wic",
            "SuperGLUE WiC (word in context)",
            ("sentence1", "sentence2"),
            ("False", "True"),
            hub="aps/super_glue",
            word="word",
        ),
        _glue(
            "boolq",
            "SuperGLUE BoolQ (yes/no questions)",
            ("question", "passage"),
            ("False", "True"),
            hub="aps/super_glue",
        ),
        _commonsense("piqa", "PIQA (physical commonsense)", ("solution1", "solution2")),
        _commonsense("siqa", "Social IQa", ("answer1", "answer2", "answer3")),
        _commonsense("winogrande", "WinoGrande", ("option1", "option2")),
        _commonsense("arc-e", "ARC-Easy", ("answer1", "answer2", "answer3", "answer4")),
        _commonsense("arc-c", "ARC-Challenge", ("answer1", "answer2", "answer3", "answer4")),
        _commonsense("obqa", "OpenBookQA", ("answer1", "answer2", "answer3", "answer4")),
        TaskSpec(
            "gsm8k",
            "GSM8k (grade-school arithmetic)",
            "generation",
            "exact_match",
            ("openai/gsm8k", "main"),
            evaluation_split="test",
        ),
    )
}


def task_names() -> List[str]:
    """Every task name ``--task`` takes."""
    return list(TASKS)


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` called ``name``.

    :raises ValueError: naming the allowed tasks.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {task_names()}")
    return TASKS[name]


def commonsense_options(instruction: str, default: Sequence[str]) -> List[str]:
    """The options a ``commonsense_15k`` instruction lists on its ``Answer format:`` line
    (``answer1/answer2/...``), else ``default``.

    >>> commonsense_options("Pick one.\\n\\nAnswer format: option1/option2", ())
    ['option1', 'option2']
    """
    found = _ANSWER_FORMAT.search(instruction)
    if found is None:
        return list(default)
    return [part.strip().lower() for part in found.group(1).split("/")]


def commonsense_to_multiple_choice(task: TaskSpec, rows, source: str, require_answer: bool = True):
    """Located ``commonsense_15k`` records (``(place, record)``) as
    :class:`~pyro_monteclora.data.multiple_choice.MultipleChoiceData`.

    The question is the instruction (with its ``input``); each option is scored as the response the
    model was trained to give, ``"the correct answer is <option>"`` (the prefix of the record's
    ``output``); the answer comes from ``answer``, else from the end of ``output``.

    :raises DataError: naming the record, for a missing instruction, or an answer that is not one
        of the question's options.
    """
    from pyro_monteclora.data.errors import DataError
    from pyro_monteclora.data.multiple_choice import MultipleChoiceData

    questions, choices, answers = [], [], []
    for place, row in rows:
        where = f"{source} {place}"
        instruction = row.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(
                f"{where}: no 'instruction' (the commonsense_15k schema has instruction, "
                f"input, output and answer); found {sorted(row)}"
            )
        extra = row.get("input") or ""
        options = commonsense_options(instruction, task.options)
        output = row.get("output") if isinstance(row.get("output"), str) else ""
        answer = row.get("answer")
        if not isinstance(answer, str) or not answer.strip():
            tail = output.strip().split()
            answer = tail[-1] if tail else None
        prefix = "the correct answer is "
        if answer and output.strip().lower().endswith(answer.strip().lower()):
            prefix = output.strip()[: len(output.strip()) - len(answer.strip())]
        questions.append(instruction.strip() + ("\n\n" + extra.strip() if extra.strip() else ""))
        choices.append([prefix + option for option in options])
        if answer is None:
            if require_answer:
                raise DataError(f"{where}: no 'answer' and no 'output' to read the right option from")
            answers.append(None)
            continue
        key = answer.strip().lower()
        if key not in options:
            raise DataError(f"{where}: answer {answer!r} is not one of the question's options {options}")
        answers.append(options.index(key))
    if not questions:
        raise DataError(f"{source} has no records")
    return MultipleChoiceData(questions, choices, None if None in answers else answers, source)


def task_score(task: Optional[str], metrics: dict) -> Optional[Tuple[str, float]]:
    """``(metric name, value)`` of ``task``'s headline metric in ``metrics``, or ``None``."""
    if task is None or task not in TASKS:
        return None
    name = TASKS[task].metric
    return (name, metrics[name]) if name in metrics else None
