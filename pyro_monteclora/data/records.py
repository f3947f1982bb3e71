"""Labelled text from your own files (csv, tsv, json, jsonl, parquet), a data set saved with
``save_to_disk``, or the Hugging Face hub.

Every check runs while the file is read, before any model is loaded, and a failure raises
:class:`DataError` naming the file, the row and the column: a missing file or column, a column
named twice (in a header or a JSON object), a file that is not UTF-8, an empty text, a missing,
NaN or fractional label, a label outside the label set. JSON-lines files are cut into lines at
``\\n`` and ``\\r\\n`` only (:func:`split_lines`): a U+2028 inside a string is content.

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

import csv
import io
import json
import math
import os
import re
import unicodedata
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from pyro_monteclora.data.classification import TextClassificationData
from pyro_monteclora.validation import parse_json

__all__ = [
    "DataError",
    "split_lines",
    "read_records",
    "read_located_records",
    "load_classification_file",
    "infer_label_names",
    "label_key",
    "records_to_classification",
    "has_visible_text",
    "load_hub_records",
    "hub_split_names",
    "saved_dataset_folder",
    "SUPPORTED_SUFFIXES",
]

SUPPORTED_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
PathLike = Union[str, os.PathLike]
#: more integer classes than this is taken for a mistake (an id column given as the label)
MAX_LABELS = 10_000


class DataError(ValueError):
    """Bad data: the message names the file (or data set), the row and the column at fault."""


def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path} cannot be read ({error.strerror})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(
            f"{path} is not UTF-8 text (invalid byte at line {line}); convert it with iconv or re-save it as UTF-8"
        ) from None


def split_lines(text: str) -> List[str]:
    """``text`` cut at ``\\n`` and ``\\r\\n`` only: unlike ``str.splitlines``, a form feed, a
    vertical tab or a Unicode line or paragraph separator (U+2028, U+2029, U+0085) inside a line is
    part of it, as it is in a JSON string.

    >>> split_lines("a\\u2028b\\r\\nc\\x0cd\\n")
    ['a\\u2028b', 'c\\x0cd']
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _check_unique_columns(names: Sequence[str], path: Path, place: str) -> None:
    """Refuse a header that names a column twice (the reader would keep only one of them)."""
    seen = set()
    for name in names:
        if name in seen and name not in ("", None):  # blank names (trailing commas) are never read
            raise DataError(f"{path}{place}: the column {name!r} appears twice; rename one of them")
        seen.add(name)


def _unique_keys(where: str):
    """A ``json.loads`` ``object_pairs_hook`` that refuses an object naming a field twice (JSON
    itself would keep the last value silently)."""

    def hook(pairs):
        record = {}
        for key, value in pairs:
            if key in record:
                raise DataError(f"{where}: the field {key!r} appears twice in one object; rename one of them")
            record[key] = value
        return record

    return hook


def read_records(path: PathLike) -> List[dict]:
    """The rows of a csv/tsv (header row), json (a list of objects, or an object of columns),
    jsonl (one object per line) or parquet file, as dictionaries."""
    return [row for _, row in read_located_records(path)]


def read_located_records(path: PathLike) -> List[Tuple[str, dict]]:
    """:func:`read_records` with each row's place in the file, for error messages:
    ``"line N"`` in jsonl, csv and tsv files (for csv, the line where the row ends), ``"record N"``
    in json and parquet files."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {list(SUPPORTED_SUFFIXES)}")
    if suffix == ".parquet":
        rows, places = _read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        rows, places = _read_delimited(path, suffix)
    elif suffix == ".jsonl":
        rows, places = _read_jsonl(path)
    else:
        rows, places = _read_json(path)
    if not rows:
        raise DataError(f"{path} has no rows")
    return list(zip(places, rows))


def _numbered_records(rows: List[dict]) -> Tuple[List[dict], List[str]]:
    return rows, [f"record {i}" for i in range(1, len(rows) + 1)]


def _read_parquet(path: Path) -> Tuple[List[dict], List[str]]:
    """A parquet file's rows (needs pyarrow), each at ``"record N"``."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        _check_unique_columns(parquet.read_schema(path).names, path, "")
        rows = parquet.read_table(path).to_pylist()
    except DataError:
        raise
    except Exception as error:  # pyarrow raises its own error types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path} is not a readable parquet file ({first})") from None
    return _numbered_records(rows)


def _read_delimited(path: Path, suffix: str) -> Tuple[List[dict], List[str]]:
    """A csv or tsv file's rows under its header, each at the line where it ends."""
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""), delimiter="\t" if suffix == ".tsv" else ",")
    try:
        _check_unique_columns(reader.fieldnames or [], path, " line 1")
        rows, places = [], []
        for row in reader:
            if None in row:  # DictReader's key for fields past the header's
                raise DataError(
                    f"{path} line {reader.line_num} has {len(reader.fieldnames) + len(row[None])} "
                    f"fields, the header {len(reader.fieldnames)}; quote a text that holds "
                    f"a {'tab' if suffix == '.tsv' else 'comma'}"
                )
            places.append(f"line {reader.line_num}")
            rows.append(dict(row))
    except csv.Error as error:
        raise DataError(f"{path} line {reader.line_num} is not valid {suffix[1:]}: {error}") from None
    return rows, places


def _read_jsonl(path: Path) -> Tuple[List[dict], List[str]]:
    """A JSON-lines file's objects (blank lines skipped), each at its line."""
    rows, places = [], []
    for number, line in enumerate(split_lines(_read_text(path)), start=1):
        if not line.strip():
            continue
        try:
            row = parse_json(line, object_pairs_hook=_unique_keys(f"{path} line {number}"))
        except json.JSONDecodeError as error:
            raise DataError(f"{path} line {number} is not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path} line {number} is not a JSON object")
        rows.append(row)
        places.append(f"line {number}")
    return rows, places


def _read_json(path: Path) -> Tuple[List[dict], List[str]]:
    """A JSON file's rows, each at ``"record N"``: a list of objects, or an object of equal-length
    column lists."""
    try:
        value = parse_json(_read_text(path), object_pairs_hook=_unique_keys(str(path)))
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) != 1:
            raise DataError(f"{path}: its columns have different lengths {sorted(lengths)}")
        keys = list(value)
        rows = [dict(zip(keys, items)) for items in zip(*value.values())]
    elif isinstance(value, list) and all(isinstance(row, dict) for row in value):
        rows = value
    else:
        raise DataError(f"{path}: expected a list of objects or an object of equal-length lists")
    return _numbered_records(rows)


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


def records_to_classification(
    rows: List[dict],
    source: str,
    text_columns: Sequence[str],
    label_column: Optional[str],
    label_names: Optional[Sequence[str]] = None,
) -> TextClassificationData:
    """Validate ``rows`` and turn them into :class:`~pyro_monteclora.data.classification.TextClassificationData`.

    :param source: the file or data set name, for error messages.
    :param text_columns: one column, or two for sentence pairs.
    :param label_column: ``None`` for unlabelled text (the ``predict`` command): every label is 0.
    :param label_names: the label set (default: inferred from these rows).
    """
    if not 1 <= len(text_columns) <= 2:
        raise DataError(f"give one text column, or two for sentence pairs; got {list(text_columns)}")
    if label_column is not None and label_column in text_columns:
        raise DataError(
            f"{source}: the label column {label_column!r} is also a text column "
            f"(every text would be its own class); name the label column"
        )
    columns = list(rows[0])
    wanted = list(text_columns) + ([label_column] if label_column is not None else [])
    for column in wanted:
        if column not in columns:
            raise DataError(f"{source}: no column {column!r}; its columns are {columns}")
    texts: List[List[str]] = [[] for _ in text_columns]
    for number, row in enumerate(rows, start=1):
        for index, column in enumerate(text_columns):
            value = row.get(column)
            if not isinstance(value, str) or not has_visible_text(value):
                shown = "missing" if value is None else repr(value)[:40]
                raise DataError(
                    f"{source} row {number}: the text in column {column!r} is empty or not a string ({shown})"
                )
            texts[index].append(value.strip())
    if label_column is None:
        names = list(label_names) if label_names is not None else ["0"]
        labels = [0] * len(rows)
    else:
        # a name label is its text without surrounding spaces (" pos" from "text, pos" is "pos")
        values = [
            value.strip() if isinstance(value, str) else value for value in (row.get(label_column) for row in rows)
        ]
        keys = _label_keys(values, source, label_column)
        names = list(label_names) if label_names is not None else _names_of(keys, source)
        index_of = {name: i for i, name in enumerate(names)}
        labels = []
        for number, (value, key) in enumerate(zip(values, keys), start=1):
            key = str(key)
            if key not in index_of:
                raise DataError(
                    f"{source} row {number}: label {value!r} in column {label_column!r} "
                    f"is outside the label set {names}"
                )
            labels.append(index_of[key])
    pairs = texts[1] if len(text_columns) == 2 else None
    return TextClassificationData(texts[0], labels, names, pairs)


def load_classification_file(
    path: PathLike,
    text_columns: Sequence[str],
    label_column: Optional[str] = "label",
    label_names: Optional[Sequence[str]] = None,
) -> TextClassificationData:
    """Read and validate one labelled file (see :func:`records_to_classification`)."""
    return records_to_classification(read_records(path), str(path), text_columns, label_column, label_names)


def saved_dataset_folder(name: str) -> Optional[Path]:
    """``name`` as a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
    (``dataset_dict.json`` or ``state.json`` inside), else ``None`` (a hub name)."""
    path = Path(name)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return path
    return None


def _saved_splits(path: Path) -> Dict[str, object]:
    """The splits of a saved data set: a ``DatasetDict``'s, or a single ``Dataset`` as ``train``."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises its own types for a damaged folder
        raise DataError(f"{path} is not a readable saved data set ({error})") from None
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    return {"train": loaded}


def load_hub_records(name: str, config: Optional[str], split: str) -> List[dict]:
    """Rows of a Hugging Face hub data set split (needs ``datasets`` and, for the hub, network), or
    of a split of a data set saved with ``save_to_disk`` when ``name`` is its folder."""
    try:
        import datasets
    except ImportError:
        raise DataError("--dataset needs the datasets package: pip install 'datasets>=3'") from None
    folder = saved_dataset_folder(name)
    if folder is not None:
        splits = _saved_splits(folder)
        if split not in splits:
            raise DataError(f"the saved data set {folder} has no split {split!r}; its splits are {list(splits)}")
        rows = splits[split].to_list()
        if not rows:
            raise DataError(f"the saved data set {folder} split {split!r} has no rows")
        return rows
    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # datasets raises many types (network, missing split, ...)
        raise DataError(f"dataset {name!r} (config {config!r}), split {split!r}: {error}") from None
    rows = loaded.to_list()
    if not rows:
        raise DataError(f"dataset {name!r} split {split!r} has no rows")
    return rows


def hub_split_names(name: str, config: Optional[str]) -> Dict[str, str]:
    """The split names of a hub data set (``train``/``validation``/``test`` where present)."""
    try:
        import datasets
    except ImportError:
        raise DataError("--dataset needs the datasets package: pip install 'datasets>=3'") from None
    folder = saved_dataset_folder(name)
    if folder is not None:
        available = list(_saved_splits(folder))
        if "train" not in available:
            raise DataError(f"the saved data set {folder} has no 'train' split; its splits are {available}")
        return {split: split for split in ("train", "validation", "test") if split in available}
    try:
        available = datasets.get_dataset_split_names(name, config)
    except Exception as error:
        raise DataError(f"dataset {name!r} (config {config!r}): {error}") from None
    return {split: split for split in ("train", "validation", "test") if split in available}
