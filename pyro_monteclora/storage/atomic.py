"""Writes that never leave a half-written file or folder behind.

Every file goes to a temporary name in the same folder and is moved into place with ``os.replace``
(atomic on POSIX), so a reader (or a resumed run after ``kill -9``) sees either the old content or the
new, never a mix. Folders (a checkpoint) are built under a temporary name and swapped in the same way.
JSON is written strict (:func:`json_line`, :func:`atomic_write_json`): NaN and infinities become
``null``. A run folder is held by one process at a time (:class:`FolderLock`, an OS advisory lock
that dies with its process).

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
import errno
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Optional, Union

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks, FolderLock does nothing
    fcntl = None

__all__ = [
    "atomic_file",
    "atomic_write_text",
    "atomic_write_lines",
    "atomic_write_json",
    "atomic_directory",
    "finite_or_none",
    "json_line",
    "replace_directory",
    "FolderLock",
    "FolderInUse",
    "folder_in_use",
    "clear_folder",
    "LOCK_NAME",
]

#: the lock file a running command keeps in its output folder (deleted when it ends)
LOCK_NAME = ".pyro-monteclora.lock"

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


def atomic_write_lines(path: PathLike, lines: Iterable[str]) -> None:
    """Write each of ``lines`` and a newline (UTF-8) to ``path`` through :func:`atomic_file`, as
    they come: a million prediction rows are streamed, not joined into one string first."""
    with atomic_file(path) as temporary:
        with open(temporary, "w", encoding="utf-8") as stream:
            for line in lines:
                stream.write(line)
                stream.write("\n")
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


class FolderInUse(RuntimeError):
    """The folder is held by another process's :class:`FolderLock`."""


class FolderLock:
    """An exclusive OS advisory lock (``flock``) on ``folder``, through the file
    :data:`LOCK_NAME` inside it.

    The kernel drops the lock when the process ends, however it ends (``kill -9`` included), so a
    crashed run never leaves its folder stuck; a stale lock file is simply taken over. The file is
    deleted on :meth:`release`. Taking it never waits: a held lock raises :class:`FolderInUse`.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> with FolderLock(folder):
    ...     folder_in_use(folder)
    True
    >>> folder_in_use(folder), sorted(folder.iterdir())
    (False, [])
    """

    def __init__(self, folder: PathLike):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None

    def acquire(self) -> "FolderLock":
        """Create ``folder`` if needed and take the lock.

        :raises FolderInUse: when another process holds it.
        """
        if self._fd is not None or fcntl is None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise FolderInUse(f"{self.folder} is in use by another process") from None
                raise
            try:  # the holder we waited on may have deleted the file: lock the one now there
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return self
            os.close(fd)

    def release(self) -> None:
        """Delete the lock file and drop the lock (nothing if it is not held)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # while still held: a waiter then sees a different file
        os.close(self._fd)
        self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def folder_in_use(folder: PathLike) -> bool:
    """Whether another :class:`FolderLock` holds ``folder`` now; creates and changes nothing."""
    if fcntl is None:
        return False
    try:
        fd = os.open(Path(folder) / LOCK_NAME, os.O_RDONLY)
    except OSError:  # no lock file (or no folder): nobody holds it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock
    return False


def clear_folder(folder: PathLike) -> None:
    """Delete everything in ``folder`` except its lock file (the folder stays, and so does a lock
    held on it)."""
    for entry in os.scandir(folder):
        if entry.name == LOCK_NAME:
            continue
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)
