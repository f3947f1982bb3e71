"""Where a command writes: output paths checked before any work (writable, not a dangling link,
a device or inside a run's checkpoint, never one of the inputs, never two outputs in one file),
and the lock that lets one process at a time write a run folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from pyro_monteclora.cli.options import UsageError

__all__ = [
    "check_writable",
    "check_output_folder",
    "lock_output_folder",
    "run_inputs",
    "check_inputs_outside",
    "check_file_output",
    "check_file_output_not_input",
    "check_distinct_outputs",
    "check_replaceable",
    "existing_output",
]


def check_writable(path: Path, option: str) -> None:
    """Raise :class:`UsageError` unless ``path`` could be created: its nearest existing ancestor
    must be a writable folder, no part of it a symbolic link that leads nowhere (dangling, or a
    loop, which ``Path.exists`` reports as absent), ``path`` itself not a device, pipe or socket
    (``/dev/stdout``: an atomic write would replace it), and nothing of it inside a run's
    ``checkpoint/`` folder (training replaces that folder whole every epoch)."""
    ancestor = Path(os.path.abspath(path))
    if ancestor.exists() and not (ancestor.is_file() or ancestor.is_dir()):
        raise UsageError(
            f"{option} {path} is not a regular file or folder (a device, pipe or socket); "
            "give a file name, or - for stdout"
        )
    _check_not_in_checkpoint(ancestor, option, path)
    while not ancestor.exists():
        if os.path.lexists(ancestor):
            what = "" if ancestor == Path(os.path.abspath(path)) else f": {ancestor}"
            raise UsageError(
                f"{option} {path}{what} is a symbolic link to nowhere (dangling, or a "
                f"loop); remove it or give another path"
            )
        ancestor = ancestor.parent
    if ancestor != Path(os.path.abspath(path)) and not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is a file, so no folder can be made there")
    if not os.access(ancestor, os.W_OK):
        raise UsageError(f"{option} {path}: {ancestor} is not writable")


def _check_not_in_checkpoint(path: Path, option: str, given) -> None:
    """Refuse ``path`` when it is, or lies inside, a run's checkpoint folder."""
    from pyro_monteclora.cli.runs import is_inside_checkpoint

    folder = is_inside_checkpoint(path)
    if folder is not None:
        raise UsageError(
            f"{option} {given} lies inside the run {folder.parent}'s {folder.name}/, which "
            f"its training replaces whole every epoch; write elsewhere"
        )


def check_output_folder(args) -> Path:
    """``--output`` as a path that is not a file and can be made, that no other process is writing
    (see :func:`lock_output_folder`), with ``--resume`` and ``--overwrite`` not both given."""
    from pyro_monteclora.storage.atomic import folder_in_use

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} exists and is not a folder")
    if folder_in_use(output):
        raise UsageError(_in_use(output))
    check_writable(output, "--output")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    return output


def _in_use(output: Path) -> str:
    return (
        f"--output {output} is in use by another process (a train or sweep still writing it); "
        f"wait for it to end, or choose another --output"
    )


def lock_output_folder(output: Path, args, marker: str, kind: str):
    """Take ``output``'s :class:`~pyro_monteclora.storage.atomic.FolderLock` (creating the folder) for the
    rest of the command; without ``--resume``, empty it.

    Called once everything is validated, just before the first write. Under the lock the folder
    is checked again (another process may have filled it since :func:`check_replaceable`), and
    without ``--resume`` its old content is deleted (the lock file stays, so the lock is never
    lost). The kernel drops the lock when the process ends, ``kill -9`` included.

    :returns: the held lock; call its ``release()`` when the command ends.
    :raises UsageError: when another process holds the folder.
    """
    from pyro_monteclora.storage.atomic import FolderInUse, FolderLock, clear_folder

    lock = FolderLock(output)
    try:
        lock.acquire()
    except FolderInUse:
        raise UsageError(_in_use(output)) from None
    try:
        if not args.resume:
            check_replaceable(output, args.overwrite, marker, kind)
            clear_folder(output)
    except BaseException:
        lock.release()
        raise
    return lock


def _real(path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _within(path, folder) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, symbolic links resolved."""
    real, base = _real(path), _real(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _same_file(a, b) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def run_inputs(args) -> List[Tuple[str, Optional[str]]]:
    """The files and folders a ``train`` or ``sweep`` reads, as ``(option, path)`` pairs."""
    return [
        ("--train-file", args.train_file),
        ("--validation-file", args.validation_file),
        ("--test-file", args.test_file),
        ("--model", args.model),
    ]


def check_inputs_outside(
    output: Path, inputs: Sequence[Tuple[str, Optional[object]]], option: str = "--output"
) -> None:
    """Refuse to replace the folder ``output`` when an input the command reads lies inside it:
    ``--overwrite`` would delete the data, model or checkpoint being used.

    :param inputs: ``(option, path)`` pairs; ``None`` and paths that do not exist (a hub name)
        are skipped. Paths are compared with symbolic links resolved.
    """
    for name, path in inputs:
        if path is None or not os.path.exists(os.path.expanduser(str(path))):
            continue
        if _within(path, output):
            raise UsageError(
                f"{option} {output} holds {name} {path}, which this command reads: "
                f"replacing {output} would delete it; move it out or choose another "
                f"{option}"
            )


def check_file_output(value, option: str, overwrite: bool) -> None:
    """An output file (``-`` or ``None``: none): writable, not a folder, not replacing a file
    without ``--overwrite``."""
    if value in (None, "-"):
        return
    path = Path(value)
    check_writable(path, option)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UsageError(f"{option} {path} already exists; pass --overwrite to replace it")


def check_file_output_not_input(output, option: str, inputs: Sequence[Tuple[str, Optional[object]]]) -> None:
    """Refuse a file ``output`` that is an input file, or an existing file inside an input folder
    (the checkpoint, the model): ``--overwrite`` would replace what the command reads."""
    if output in (None, "-"):
        return
    for name, path in inputs:
        if path in (None, "-") or not os.path.exists(os.path.expanduser(str(path))):
            continue
        if os.path.isdir(path):
            hit = os.path.lexists(output) and _within(output, path)
        else:
            hit = _same_file(output, path)
        if hit:
            raise UsageError(
                f"{option} {output} would replace {name} {path}, which this command reads; choose another {option}"
            )


def check_distinct_outputs(outputs: Sequence[Tuple[str, Optional[str]]]) -> None:
    """Refuse two output options naming one file (the second write would replace the first)."""
    given = [(option, value) for option, value in outputs if value not in (None, "-")]
    for index, (option, value) in enumerate(given):
        for other, earlier in given[:index]:
            if _same_file(value, earlier):
                raise UsageError(f"{other} and {option} name the same file ({value}); give each its own path")


def check_replaceable(output: Path, overwrite: bool, marker: str, kind: str) -> None:
    """An existing, non-empty ``output`` needs ``--overwrite`` (or ``--resume``), and is replaced
    only when it holds ``marker`` (it is a ``kind`` folder): nothing else is ever deleted."""
    if not existing_output(output):
        return
    if not overwrite:
        raise UsageError(f"--output {output} already exists; pass --overwrite to replace it or --resume to continue it")
    if not (output / marker).is_file():
        raise UsageError(f"--overwrite: {output} is not a {kind} folder (no {marker}); refusing to delete it")


def existing_output(path: Path) -> bool:
    """Whether ``path`` exists and is not an empty folder (a lock file left by a killed run does
    not count)."""
    from pyro_monteclora.storage.atomic import LOCK_NAME

    if not path.exists():
        return False
    if not path.is_dir():
        return True
    with os.scandir(path) as entries:
        return any(entry.name != LOCK_NAME for entry in entries)
