"""Writes that never leave a half-written file or folder behind.

Every file goes to a temporary name in the same folder and is moved into place with ``os.replace``
(atomic on POSIX), so a reader (or a resumed run after ``kill -9``) sees either the old content or the
new, never a mix. Folders (a checkpoint) are built under a temporary name and swapped in the same way.
JSON is written strict (:func:`json_line`, :func:`atomic_write_json`): NaN and infinities become
``null``.

>>> import tempfile, pathlib
>>> folder = pathlib.Path(tempfile.mkdtemp())
>>> atomic_write_text(folder / "a.txt", "hello")
>>> (folder / "a.txt").read_text()
'hello'
>>> with atomic_directory(folder / "ckpt") as staging:
...     _ = (staging / "x.json").write_text("{}")
>>> sorted(p.name for p in (folder / "ckpt").iterdir())
['x.json']
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Union

__all__ = ["atomic_file", "atomic_write_text", "atomic_write_json", "atomic_directory", "finite_or_none",
           "json_line", "replace_directory"]

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; when the block ends without an exception the
    file there is made readable (0644) and renamed to ``path``, otherwise it is deleted.

    Every file this library writes goes through here (JSON, PNG, safetensors).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600 files
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_file`, flushed to disk."""
    with atomic_file(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())


def finite_or_none(value):
    """Replace NaN and infinities by ``None``, recursively, so the value is strict JSON.

    >>> finite_or_none({"auroc": float("nan"), "x": [1.0, float("inf")]})
    {'auroc': None, 'x': [1.0, None]}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def atomic_write_json(path: PathLike, value) -> None:
    """Write ``value`` as indented strict JSON (NaN becomes ``null``) atomically."""
    atomic_write_text(path, json.dumps(finite_or_none(value), indent=2, allow_nan=False) + "\n")


def json_line(value) -> str:
    """``value`` as one line of strict JSON (no newline at the end): NaN and infinities become
    ``null``, so every JSON-lines file this library writes is valid JSON.

    >>> json_line({"p": float("nan"), "q": [0.5, float("inf")]})
    '{"p": null, "q": [0.5, null]}'
    """
    return json.dumps(finite_or_none(value), allow_nan=False)


def replace_directory(staging: Path, target: Path) -> None:
    """Move the finished folder ``staging`` to ``target``, replacing what was there.

    ``target`` is first renamed to ``<target>.old`` and deleted only after the swap, so at every
    instant one complete folder exists (a loader looks at ``<target>.old`` if ``target`` is missing).
    """
    previous = target.with_name(target.name + ".old")
    if target.exists():
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(target, previous)
    # if only <target>.old exists (a crash between the two renames) it is kept until the new
    # folder is in place
    os.replace(staging, target)
    if previous.exists():
        shutil.rmtree(previous)


@contextlib.contextmanager
def atomic_directory(target: PathLike) -> Iterator[Path]:
    """Yield an empty staging folder next to ``target``; on success it replaces ``target``.

    On an exception the staging folder is deleted and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a killed earlier write
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(staging, 0o755)
    try:
        yield staging
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
