"""Labelled text, validated: from your own files (csv, tsv, json, jsonl, parquet), a
``datasets.Dataset`` or rows in Python, as :class:`~pyro_monteclora.data.classification.TextClassificationData`.

Files are read by ``datasets`` (:func:`~pyro_monteclora.data.files.load_file_table`) and validated
in Arrow batches of :data:`BATCH_ROWS` rows, so a file of a million rows is checked at flat memory.
Every check runs before any model is loaded, and a failure raises :class:`DataError` naming the
file, the row and the column: a missing column, an empty text, a missing, NaN or fractional label,
a label outside the label set (and, while the file is read, a file that is not UTF-8, a column
named twice, a malformed line).

Labels may be whole numbers (``0 .. K-1``, however written: ``1``, ``1.0`` and ``"1"`` are one
label, see :func:`label_key`) or names (``"positive"``). The label set comes from the training
file (numbers: ``0 .. max``; names: sorted) unless given, and the validation and test files must
stay inside it.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "train.jsonl"
>>> _ = path.write_text('{"text": "fine", "label": "pos"}\\n{"text": "dull", "label": "neg"}\\n')
>>> data = load_classification_file(path, ["text"], "label")
>>> data.label_names, data.labels
(['neg', 'pos'], [1, 0])
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from pyro_monteclora.data.classification import TextClassificationData
from pyro_monteclora.data.errors import DataError  # noqa: F401  (importable from here, as it always was)
from pyro_monteclora.data.files import load_file_table

__all__ = [
    "label_key",
    "infer_label_names",
    "has_visible_text",
    "records_to_classification",
    "table_to_classification",
    "load_classification_file",
    "BATCH_ROWS",
]

PathLike = Union[str, os.PathLike]
#: more integer classes than this is taken for a mistake (an id column given as the label)
MAX_LABELS = 10_000
#: rows validated (and normalised) at a time
BATCH_ROWS = 10_000


#: a number written in ASCII digits (``"²"``, ``"--1"`` or ``"١"`` are names, not numbers)
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def label_key(value) -> Union[int, str]:
    """The class a label value stands for: an ``int`` for a whole number, whether written ``1``,
    ``1.0``, ``"1"`` or ``" 1.0 "`` (all one class), else the name itself (``"pos"``, ``True``).

    >>> [label_key(v) for v in (1, 1.0, " 1 ", "1.0", "pos", "--1", "\u00b2")]
    [1, 1, 1, 1, 'pos', '--1', '\u00b2']

    :raises ValueError: for a value that is no label: NaN, an infinity, a number with a fraction,
        a list or an object (the message says which).
    """
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER.fullmatch(text):
            return value
        if _INTEGER.fullmatch(text):
            try:
                return int(text)
            except ValueError:  # longer than Python converts (4,300 digits)
                raise ValueError("is a number too large to be a class") from None
        value = float(text)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("is not a finite number")
        if not value.is_integer():
            raise ValueError("is a number with a fraction; classification labels are integers 0..K-1 or names")
        return int(value)
    raise ValueError(f"is a {type(value).__name__}, not a number or a name")


def _label_keys(values: Sequence, source: str, column: Optional[str]) -> List[Union[int, str]]:
    """:func:`label_key` of every value; a missing or bad one is a :class:`DataError` naming its
    row."""
    where = f" in column {column!r}" if column is not None else ""
    keys = []
    for number, value in enumerate(values, start=1):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{source} row {number}: no label{where}")
        try:
            keys.append(label_key(value))
        except ValueError as error:
            raise DataError(f"{source} row {number}: label {str(value)[:40]!r}{where} {error}") from None
    return keys


def _names_of(keys: Sequence[Union[int, str]], source: str) -> List[str]:
    if all(isinstance(key, int) for key in keys):
        if min(keys) < 0:
            raise DataError(f"{source}: integer labels must be >= 0, found {min(keys)}")
        if max(keys) >= MAX_LABELS:
            raise DataError(
                f"{source}: integer label {max(keys)} would make more than "
                f"{MAX_LABELS} classes; use label names, or labels 0..K-1"
            )
        return [str(i) for i in range(max(keys) + 1)]
    names = sorted({str(key) for key in keys})
    folded = {}
    for name in names:  # "Positive" and "positive" are taken for a mistake, not two classes
        if name.casefold() in folded:
            raise DataError(
                f"{source}: the labels {folded[name.casefold()]!r} and {name!r} differ only "
                f"in case; write each label one way"
            )
        folded[name.casefold()] = name
    return names


def infer_label_names(values: Sequence, source: str) -> List[str]:
    """The label set of a training file: ``["0", ..., str(max)]`` when every label is a whole
    number (``1`` and ``1.0`` are one), else the sorted names.

    :raises DataError: naming the row of a missing, NaN or fractional label.
    """
    return _names_of(_label_keys(values, source, None), source)


def has_visible_text(text: str) -> bool:
    """Whether ``text`` holds a character that is not white space, a control or a format character
    (zero-width spaces and joiners, a byte-order mark, soft hyphens): a text of only those is empty.

    >>> has_visible_text("\u200b \u200d\ufeff"), has_visible_text("\u200bok")
    (False, True)
    """
    return any(not (ch.isspace() or unicodedata.category(ch) in ("Cc", "Cf", "Zs", "Zl", "Zp")) for ch in text)


def _check_columns(columns: Sequence[str], source: str, text_columns: Sequence[str], label_column: Optional[str]):
    if not 1 <= len(text_columns) <= 2:
        raise DataError(f"give one text column, or two for sentence pairs; got {list(text_columns)}")
    if label_column is not None and label_column in text_columns:
        raise DataError(
            f"{source}: the label column {label_column!r} is also a text column "
            f"(every text would be its own class); name the label column"
        )
    for column in list(text_columns) + ([label_column] if label_column is not None else []):
        if column not in columns:
            raise DataError(f"{source}: no column {column!r}; its columns are {list(columns)}")


def _label_value(value):
    """A label as read: a name label is its text without surrounding spaces (" pos" from
    "text, pos" is "pos")."""
    return value.strip() if isinstance(value, str) else value


class _Validation:
    """The checks of one pass over column batches: the first bad text, the first bad label and
    the first label outside a given label set, each kept until the pass ends so that they are
    reported in that order (as one reading of all texts, then all labels, would)."""

    def __init__(self, source: str, text_columns, label_column, label_names):
        self.source, self.text_columns, self.label_column = source, list(text_columns), label_column
        self.index_of = None if label_names is None else {str(name): i for i, name in enumerate(label_names)}
        self.text_error = self.label_error = self.outside_error = None
        self.keys: set = set()

    def batch(self, start: int, columns: Dict[str, list]) -> None:
        if self.text_error is None:
            texts = [columns[column] for column in self.text_columns]
            for offset, values in enumerate(zip(*texts)):
                for column, value in zip(self.text_columns, values):
                    if not isinstance(value, str) or not has_visible_text(value):
                        shown = "missing" if value is None else repr(value)[:40]
                        self.text_error = DataError(
                            f"{self.source} row {start + offset + 1}: the text in column {column!r} is empty "
                            f"or not a string ({shown})"
                        )
                        break
                if self.text_error is not None:
                    break
        if self.label_column is None or self.label_error is not None:
            return
        where = f" in column {self.label_column!r}"
        for offset, value in enumerate(columns[self.label_column]):
            value = _label_value(value)
            number = start + offset + 1
            if value is None or (isinstance(value, str) and not value.strip()):
                self.label_error = DataError(f"{self.source} row {number}: no label{where}")
                return
            try:
                key = label_key(value)
            except ValueError as error:
                self.label_error = DataError(f"{self.source} row {number}: label {str(value)[:40]!r}{where} {error}")
                return
            self.keys.add(key)
            if self.index_of is not None and self.outside_error is None and str(key) not in self.index_of:
                self.outside_error = DataError(
                    f"{self.source} row {number}: label {value!r} in column {self.label_column!r} "
                    f"is outside the label set {list(self.index_of)}"
                )

    def label_names(self, given: Optional[Sequence[str]]) -> List[str]:
        """Raise the first error found, else the label set (``given``, or inferred)."""
        for error in (self.text_error, self.label_error):
            if error is not None:
                raise error
        if self.label_column is None:
            return list(given) if given is not None else ["0"]
        names = list(given) if given is not None else _names_of(sorted(self.keys, key=str), self.source)
        if self.outside_error is not None:
            raise self.outside_error
        return names


def _normalised(columns: Dict[str, list], text_columns, label_column, index_of) -> Dict[str, list]:
    """The columns the model reads: ``text`` (and ``text_pair``) stripped, ``label`` the index of
    each label in the label set (0 for unlabelled text)."""
    out = {"text": [value.strip() for value in columns[text_columns[0]]]}
    if len(text_columns) == 2:
        out["text_pair"] = [value.strip() for value in columns[text_columns[1]]]
    if label_column is None:
        out["label"] = [0] * len(out["text"])
    else:
        out["label"] = [index_of[str(label_key(_label_value(value)))] for value in columns[label_column]]
    return out


def _row_batches(rows: Sequence[dict], columns: Sequence[str]) -> Iterator[Tuple[int, Dict[str, list]]]:
    for start in range(0, len(rows), BATCH_ROWS):
        part = rows[start : start + BATCH_ROWS]
        yield start, {column: [row.get(column) for row in part] for column in columns}


def _table_batches(table, columns: Sequence[str]) -> Iterator[Tuple[int, Dict[str, list]]]:
    start = 0
    for batch in table.select_columns(list(columns)).iter(batch_size=BATCH_ROWS):
        yield start, batch
        start += len(batch[columns[0]])


def _validated_names(batches: Iterable, source, text_columns, label_column, label_names) -> List[str]:
    check = _Validation(source, text_columns, label_column, label_names)
    for start, columns in batches:
        check.batch(start, columns)
        if check.text_error is not None:  # reported before anything else: the rest cannot change it
            break
    return check.label_names(label_names)


def records_to_classification(
    rows: List[dict],
    source: str,
    text_columns: Sequence[str],
    label_column: Optional[str],
    label_names: Optional[Sequence[str]] = None,
) -> TextClassificationData:
    """Validate ``rows`` (dictionaries held in Python) and turn them into
    :class:`~pyro_monteclora.data.classification.TextClassificationData`.

    :param source: the file or data set name, for error messages.
    :param text_columns: one column, or two for sentence pairs.
    :param label_column: ``None`` for unlabelled text (the ``predict`` command): every label is 0.
    :param label_names: the label set (default: inferred from these rows).
    """
    _check_columns(list(rows[0]) if rows else [], source, text_columns, label_column)
    wanted = list(text_columns) + ([label_column] if label_column is not None else [])
    names = _validated_names(_row_batches(rows, wanted), source, text_columns, label_column, label_names)
    index_of = {name: i for i, name in enumerate(names)}
    columns = _normalised({c: [row.get(c) for row in rows] for c in wanted}, text_columns, label_column, index_of)
    return TextClassificationData(columns["text"], columns["label"], names, columns.get("text_pair"))


def table_to_classification(
    table,
    source: str,
    text_columns: Sequence[str],
    label_column: Optional[str],
    label_names: Optional[Sequence[str]] = None,
) -> TextClassificationData:
    """Validate a ``datasets.Dataset`` batch by batch and turn it into
    :class:`~pyro_monteclora.data.classification.TextClassificationData` with ``Dataset.map``
    (cached next to a file's table, so the rows never become Python lists).

    The parameters are those of :func:`records_to_classification`.
    """
    import datasets

    from pyro_monteclora.data.files import PROGRESS_ROWS, datasets_progress

    _check_columns(table.column_names, source, text_columns, label_column)
    if len(table) == 0:
        raise DataError(f"{source} has no rows")
    wanted = list(text_columns) + ([label_column] if label_column is not None else [])
    names = _validated_names(_table_batches(table, wanted), source, text_columns, label_column, label_names)
    features = {"text": datasets.Value("string")}
    if len(text_columns) == 2:
        features["text_pair"] = datasets.Value("string")
    features["label"] = datasets.Value("int64")
    with datasets_progress(len(table) >= PROGRESS_ROWS):
        normal = table.select_columns(wanted).map(
            _normalised,
            batched=True,
            batch_size=BATCH_ROWS,
            fn_kwargs={
                "text_columns": list(text_columns),
                "label_column": label_column,
                "index_of": {name: i for i, name in enumerate(names)},
            },
            remove_columns=wanted,
            features=datasets.Features(features),
            desc="checking labels",
        )
    return TextClassificationData.from_table(normal, names)


def load_classification_file(
    path: PathLike,
    text_columns: Sequence[str],
    label_column: Optional[str] = "label",
    label_names: Optional[Sequence[str]] = None,
) -> TextClassificationData:
    """Read one labelled file with ``datasets`` and validate it (see :func:`table_to_classification`)."""
    return table_to_classification(load_file_table(path), str(path), text_columns, label_column, label_names)
