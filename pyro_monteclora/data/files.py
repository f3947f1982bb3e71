"""Your own data files (csv, tsv, json, jsonl, parquet) as Arrow tables, read by ``datasets``.

:func:`load_file_table` hands a file to ``datasets.load_dataset`` (``data_files=``,
``split="train"``), which parses it into an Arrow file in the ``datasets`` cache and memory-maps
it: a file of a million rows costs no Python list, and a second read of an unchanged file is served
from the cache. Before that, one streaming pass over the file (constant memory) checks what
``datasets`` would accept silently or report without a place, and raises :class:`DataError` naming
the file and the line:

* a file that is not UTF-8 (the line of the first bad byte);
* a column named twice in a csv/tsv header or a parquet schema, a field named twice in one JSON
  object (``datasets`` would keep one of them);
* a csv/tsv row with more fields than its header (``pandas`` would say "Error tokenizing data");
* a JSON-lines line that is not JSON or not an object.

csv and tsv cells are read as text, exactly as written (``NA``, ``null`` and an empty cell stay
strings, a leading zero stays); JSON and parquet values keep their types. JSON-lines files are cut
into lines at ``\\n`` and ``\\r\\n`` only (:func:`split_lines`): a U+2028 inside a string is
content. A ``.json`` file (one document: a list of objects, or an object of equal-length column
lists) is parsed whole; use ``.jsonl``, ``.csv`` or ``.parquet`` for big data.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "train.csv"
>>> _ = path.write_text("text,label\\nNA,1\\n007,0\\n")
>>> load_file_table(path).to_list()
[{'text': 'NA', 'label': '1'}, {'text': '007', 'label': '0'}]
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import os
from pathlib import Path
from typing import Iterator, List, Sequence, Tuple, Union

from pyro_monteclora.data.errors import DataError
from pyro_monteclora.validation import parse_json

__all__ = [
    "SUPPORTED_SUFFIXES",
    "split_lines",
    "load_file_table",
    "read_records",
    "read_located_records",
    "datasets_progress",
]

SUPPORTED_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
PathLike = Union[str, os.PathLike]
#: a file this big (bytes) or a table this long (rows) shows the ``datasets`` progress bars
PROGRESS_BYTES = 16 << 20
PROGRESS_ROWS = 50_000
_CHUNK = 1 << 20


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


@contextlib.contextmanager
def datasets_progress(show: bool) -> Iterator[None]:
    """Show (or hide) the ``datasets`` progress bars ("Generating train split", "Map") inside the
    block, as they were afterwards: long work shows progress, a small file prints nothing."""
    from datasets.utils import logging as datasets_logging

    before = datasets_logging.is_progress_bar_enabled()
    (datasets_logging.enable_progress_bar if show else datasets_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (datasets_logging.enable_progress_bar if before else datasets_logging.disable_progress_bar)()


def _not_utf8(path: Path) -> DataError:
    """The error for a file that is not UTF-8, naming the line of its first bad byte (found by a
    second, binary pass: only a failing file pays for it)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    line = 1
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as error:
                line += chunk[: max(error.start, 0)].count(b"\n")
                break
            if not chunk:
                break
            line += chunk.count(b"\n")
    return DataError(
        f"{path} is not UTF-8 text (invalid byte at line {line}); convert it with iconv or re-save it as UTF-8"
    )


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


def _scan_delimited(path: Path, delimiter: str, located: bool) -> Tuple[List[str], int, List[str]]:
    """The header of a csv/tsv file, its number of rows and (``located``) the line where each row
    ends, checked in one streaming pass: a duplicate column, a row wider than the header, a line
    ``csv`` cannot parse."""
    places: List[str] = []
    count = 0
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path} has no rows")
            _check_unique_columns(header, path, " line 1")
            for row in reader:
                if not row:  # a blank line is no row
                    continue
                if len(row) > len(header):
                    raise DataError(
                        f"{path} line {reader.line_num} has {len(row)} fields, the header {len(header)}; "
                        f"quote a text that holds a {'tab' if delimiter == chr(9) else 'comma'}"
                    )
                count += 1
                if located:
                    places.append(f"line {reader.line_num}")
        except csv.Error as error:
            raise DataError(f"{path} line {reader.line_num} is not valid {path.suffix[1:]}: {error}") from None
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
    return header, count, places


def _scan_jsonl(path: Path, located: bool) -> Tuple[int, List[str]]:
    """The number of objects of a JSON-lines file and (``located``) the line of each, checked one
    line at a time: each non-blank line one JSON object naming each field once."""
    places: List[str] = []
    count = 0
    with path.open(encoding="utf-8-sig", newline="") as handle:
        try:
            for number, line in enumerate(_lines_of(handle), start=1):
                if not line.strip():
                    continue
                try:
                    row = parse_json(line, object_pairs_hook=_unique_keys(f"{path} line {number}"))
                except json.JSONDecodeError as error:
                    raise DataError(f"{path} line {number} is not valid JSON ({error.msg})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path} line {number} is not a JSON object")
                count += 1
                if located:
                    places.append(f"line {number}")
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
    return count, places


def _lines_of(handle) -> Iterator[str]:
    """The lines of a text handle opened with ``newline=""``, cut as :func:`split_lines` cuts."""
    tail = ""
    while True:
        chunk = handle.read(_CHUNK)
        if not chunk:
            break
        lines = split_lines(tail + chunk + "\0")  # the sentinel keeps a trailing piece apart
        tail = lines.pop()[:-1]
        yield from lines
    if tail:
        yield from split_lines(tail)


def _scan_json(path: Path):
    """A ``.json`` document checked whole: a list of objects, or an object of equal-length column
    lists (returned, so that it becomes a table column by column)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(path) from None
    try:
        value = parse_json(text, object_pairs_hook=_unique_keys(str(path)))
    except json.JSONDecodeError as error:
        raise DataError(f"{path} is not valid JSON ({error.msg} at line {error.lineno})") from None
    if isinstance(value, dict) and value and all(isinstance(v, list) for v in value.values()):
        lengths = {len(v) for v in value.values()}
        if len(lengths) != 1:
            raise DataError(f"{path}: its columns have different lengths {sorted(lengths)}")
        return value
    if isinstance(value, list) and all(isinstance(row, dict) for row in value):
        return value
    raise DataError(f"{path}: expected a list of objects or an object of equal-length lists")


def _scan_parquet(path: Path) -> None:
    """A parquet file's schema: readable, each column named once."""
    try:
        import pyarrow.parquet as parquet

        names = parquet.read_schema(path).names
    except Exception as error:  # pyarrow raises its own error types
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"{path} is not a readable parquet file ({first})") from None
    _check_unique_columns(names, path, "")


def _checked_path(path: PathLike) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataError(f"{path}: unsupported file type {suffix!r}; use one of {list(SUPPORTED_SUFFIXES)}")
    return path


def _columns_table(columns: dict):
    """An in-memory table from a ``.json`` object of column lists; a column mixing types (``1``
    and ``"pos"``) is stored as JSON values, as ``datasets`` stores such a JSON-lines column."""
    import datasets

    try:
        return datasets.Dataset.from_dict(columns)
    except Exception:  # pyarrow cannot give one type to a mixed column
        return datasets.Dataset.from_dict(columns, features=datasets.Features({k: datasets.Json() for k in columns}))


def _load(path: Path, builder: str, **options):
    """``datasets.load_dataset(builder, data_files=path, split="train")``, its failure one
    :class:`DataError` naming the file."""
    import datasets

    try:
        with datasets_progress(path.stat().st_size >= PROGRESS_BYTES):
            return datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    except Exception as error:  # datasets wraps the parser's error in its own
        cause = error.__cause__ or error
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if isinstance(cause, PermissionError):
            first += "; the datasets cache must be writable: set HF_DATASETS_CACHE to a folder you can write"
        raise DataError(f"{path} cannot be read ({first})") from None


def _load_table(path: Path, located: bool):
    """The checked file's table, and (``located``) each row's place."""
    import datasets

    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        header, count, places = _scan_delimited(path, "\t" if suffix == ".tsv" else ",", located)
        if not count:
            raise DataError(f"{path} has no rows")
        # every cell is text, as written: no NA guessing, no number parsing; blank header names
        # (trailing commas) get names of their own
        names = [name if name else f"__unnamed_{i}" for i, name in enumerate(header)]
        features = datasets.Features({name: datasets.Value("string") for name in names})
        table = _load(
            path,
            "csv",
            sep="\t" if suffix == ".tsv" else ",",
            column_names=names,
            header=0,
            features=features,
            keep_default_na=False,
            na_filter=False,
            encoding="utf-8-sig",
        )
    elif suffix == ".jsonl":
        count, places = _scan_jsonl(path, located)
        table = _load(path, "json") if count else None
    elif suffix == ".json":
        value = _scan_json(path)
        if isinstance(value, dict):
            table = _columns_table(value)
        else:
            table = _load(path, "json") if value else None
        places = []  # numbered below
    else:
        _scan_parquet(path)
        table = _load(path, "parquet")
        places = []
    if table is None or len(table) == 0:
        raise DataError(f"{path} has no rows")
    # json and parquet rows, or a scan that disagrees with the parser on a row, are numbered plainly
    if located and len(places) != len(table):
        places = [f"record {i}" for i in range(1, len(table) + 1)]
    return table, places


def load_file_table(path: PathLike):
    """A csv, tsv, json, jsonl or parquet file as a ``datasets.Dataset`` (memory-mapped from the
    ``datasets`` cache), checked as the module says.

    :raises DataError: naming the file (and the line) for a missing, unsupported, empty or
        malformed file.
    """
    return _load_table(_checked_path(path), located=False)[0]


def read_records(path: PathLike) -> List[dict]:
    """The rows of a file (see :func:`load_file_table`) as dictionaries, for data small enough to
    hold in Python (prompts, questions); classification data stays in Arrow."""
    return [row for _, row in read_located_records(path)]


def read_located_records(path: PathLike) -> List[Tuple[str, dict]]:
    """:func:`read_records` with each row's place in the file, for error messages:
    ``"line N"`` in jsonl, csv and tsv files (for csv, the line where the row ends), ``"record N"``
    in json and parquet files.

    A JSON row has the fields its object names: the table's other columns (``None`` in that row,
    as Arrow fills them) are left out, as is a field written ``null``."""
    table, places = _load_table(_checked_path(path), located=True)
    rows = table.to_list()
    if Path(path).suffix.lower() in (".json", ".jsonl"):
        rows = [{key: value for key, value in row.items() if value is not None} for row in rows]
    return list(zip(places, rows))
