"""Where and from what code a result was measured: the record every result file quoted by the
README and the docs carries under ``"provenance"`` (and as one line of its markdown).

``provenance()`` gives the commit of the checkout whose ``pyro_monteclora`` Python imports (the code
being measured; ``"unknown"`` outside a git checkout, as for a wheel, or without ``git``), whether
tracked files under ``pyro_monteclora/``, ``examples/`` or ``benchmarks/`` had
uncommitted changes (``benchmarks/results/`` is left out: a run of ``make results`` rewrites it
between steps), the UTC date, the torch and Python versions, the machine and the command line. It
never raises: a number measured without git is still worth keeping, with its commit unknown. A copy
of the tree without ``.git`` (a GPU machine, say) can be told its commit through the environment:
``PYRO_MONTECLORA_COMMIT=$(git rev-parse HEAD)`` (recorded with ``"dirty": None``, since nothing
can check it there).

Scripts under ``benchmarks/`` import it as ``from provenance import provenance``; the examples load
it through ``examples/example_support.py``.
"""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence, Union

__all__ = [
    "provenance",
    "provenance_line",
    "git_state",
    "checkout_environment",
    "WATCHED",
    "UNKNOWN",
    "COMMIT_VARIABLE",
]

#: the folders whose uncommitted changes make a result "dirty" (pathspecs from the repository root)
WATCHED = ("pyro_monteclora", "examples", "benchmarks", ":(exclude)benchmarks/results")
UNKNOWN = "unknown"
#: the environment variable that names the commit of a copy of the tree without ``.git``
COMMIT_VARIABLE = "PYRO_MONTECLORA_COMMIT"
REPO = Path(__file__).resolve().parents[1]


def _git(args: Sequence[str], cwd: Path) -> Optional[str]:
    """``git args`` in ``cwd``: its stripped stdout, or ``None`` when git is missing or fails."""
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=str(cwd),
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _code_folder() -> Path:
    """The folder of the ``pyro_monteclora`` that an import would load (without importing it), or
    this repository when none is importable."""
    try:
        spec = importlib.util.find_spec("pyro_monteclora")
    except (ImportError, ValueError):
        spec = None
    return Path(spec.origin).parent if spec is not None and spec.origin else REPO


def git_state(path: Union[str, Path, None] = None) -> dict:
    """``{"commit": sha, "dirty": bool}`` of the git checkout holding ``path`` (default: the
    imported ``pyro_monteclora``'s); without one, the commit named by ``$PYRO_MONTECLORA_COMMIT`` or ``"unknown"``, and
    ``"dirty": None``."""
    folder = Path(path) if path is not None else _code_folder()
    if folder.is_file():
        folder = folder.parent
    root = _git(["rev-parse", "--show-toplevel"], folder) if folder.is_dir() else None
    commit = _git(["rev-parse", "--verify", "HEAD"], folder) if root else None
    if not root or not commit:
        return {"commit": os.environ.get(COMMIT_VARIABLE, "").strip() or UNKNOWN, "dirty": None}
    changes = _git(["status", "--porcelain", "--untracked-files=no", "--", *WATCHED], Path(root))
    return {"commit": commit, "dirty": None if changes is None else bool(changes)}


def _torch_version() -> Optional[str]:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def _gpu() -> Optional[str]:
    try:
        import torch

        return torch.cuda.get_device_name() if torch.cuda.is_available() else None
    except Exception:  # no torch, a broken driver: neither may lose the result being written
        return None


def provenance(path: Union[str, Path, None] = None, *, argv: Optional[Sequence[str]] = None) -> dict:
    """The provenance record of a result measured now by the code in ``path``'s checkout.

    :param path: a file or folder inside the checkout (default: that of the ``pyro_monteclora``
        an import loads, else this repository).
    :param argv: the command line to record (default: ``sys.argv``).
    :returns: ``commit``, ``dirty``, ``date`` (ISO 8601, UTC), ``torch``, ``python``, ``machine``,
        ``gpu`` (``None`` without CUDA) and ``command``.
    """
    record = git_state(path)
    record.update(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        torch=_torch_version(),
        python=platform.python_version(),
        machine=f"{platform.platform()}, {os.cpu_count()} CPUs",
        gpu=_gpu(),
        command=list(sys.argv if argv is None else argv),
    )
    return record


def provenance_line(record: dict) -> str:
    """One markdown line saying where ``record`` (from :func:`provenance`) was measured."""
    commit = record.get("commit", UNKNOWN)
    state = {True: " with uncommitted changes", False: "", None: " (uncommitted changes unknown)"}
    dirty = state.get(record.get("dirty"), "")
    gpu = f", {record['gpu']}" if record.get("gpu") else ""
    command = " ".join(str(part) for part in record.get("command", []))
    return (
        f"Measured at commit `{commit}`{dirty} on {record.get('date')}, torch {record.get('torch')}, "
        f"Python {record.get('python')}, {record.get('machine')}{gpu}; command: `{command}`"
    )


def checkout_environment() -> dict:
    """The environment for a child process that imports this checkout's ``pyro_monteclora`` (the
    code whose commit the results record), whatever else is installed."""
    paths = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


if __name__ == "__main__":  # `python benchmarks/provenance.py`: what a result measured now would record
    import json

    print(json.dumps(provenance(), indent=1))
