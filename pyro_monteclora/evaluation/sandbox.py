"""Running model-written Python programs in a guarded child process (HumanEval's execution).

Each program runs in its **own process** (``python -I -S -B``: no user site, no ``site-packages``,
no environment variables read, no ``.pyc`` written) started in a new session, so that its whole
process group is killed with ``SIGKILL`` afterwards, whatever it did. Before the program's first
line, trusted start-up code in that process:

* sets hard resource limits: CPU time (``RLIMIT_CPU``), address space (``RLIMIT_AS``: a 10 GB
  allocation is a ``MemoryError``), the size of any file it writes (``RLIMIT_FSIZE``), no new
  processes or threads for an unprivileged user (``RLIMIT_NPROC`` = 0);
* moves into a new, empty **network namespace** where the kernel allows it (``unshare``; recorded
  as :attr:`ExecutionResult.network_namespace`);
* installs a Python **audit hook** (:pep:`578`; it cannot be removed) that refuses process creation
  (``os.fork``, ``os.system``, ``subprocess``, ``os.exec*``, ``os.posix_spawn``, ``pty``), signals
  to other processes, ``ctypes`` and the modules that reach C process calls directly, every socket
  operation, writing, deleting, renaming or changing the mode of any path outside the program's
  working directory, and reading ``/proc`` and ``/sys`` (another process's environment).

The parent gives it a fresh empty working directory (deleted afterwards), closed standard input,
an environment of ``PATH``, ``HOME``, ``TMPDIR`` and ``LANG`` only (no secrets to read), standard
output and error in files of that directory, and a wall-clock timeout. Every outcome is a
:class:`ExecutionResult` with a reason: ``passed``, ``failed: AssertionError``, ``failed: NameError``,
``timeout``, ``cpu time limit``, ``memory limit``, ``file size limit``, ``refused: import socket``,
``refused: os.fork``, ...

**What it does not protect against**: it is a guard against runaway and careless code, and against
the obvious hostile calls, not a security boundary. Code written to escape a Python sandbox can
(for example by tampering with the audit hook's objects through ``gc`` or by exploiting an
interpreter bug), and a process running as root ignores ``RLIMIT_NPROC``. It may still **read**
any file the user can read (without the network it cannot send it anywhere, unless the network
namespace was refused and a hook bypass is found), and it shares the machine's CPU and memory
within its limits. For untrusted models, run the evaluation itself inside a container or VM with
no network and no credentials.

>>> result = run_program("assert sum(range(4)) == 6")
>>> result.passed, result.reason
(True, 'passed')
>>> run_program("import socket; socket.socket()").reason
'refused: import socket'
>>> run_program("import os; os.system('touch ~/pwned')").reason
'refused: os.system'
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, List, Optional

__all__ = ["SandboxLimits", "ExecutionResult", "run_program", "run_programs"]

#: the start-up code run before the program, in the program's process (see the module)
_BOOT = r"""
import os, resource, sys
limits = [int(v) for v in sys.argv[1:5]]
resource.setrlimit(resource.RLIMIT_CPU, (limits[0], limits[0] + 1))
resource.setrlimit(resource.RLIMIT_AS, (limits[1], limits[1]))
resource.setrlimit(resource.RLIMIT_FSIZE, (limits[2], limits[2]))
try:
    resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
except (ValueError, OSError):
    pass
namespace = "no"
if limits[3]:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for flags in (0x40000000, 0x40000000 | 0x10000000):  # CLONE_NEWNET, + CLONE_NEWUSER
            if libc.unshare(flags) == 0:
                namespace = "yes"
                break
    except Exception:
        pass
with open("namespace.txt", "w") as out:
    out.write(namespace)
for name in ("ctypes", "_ctypes", "ctypes._endian", "resource"):  # a new import of them is refused below
    sys.modules.pop(name, None)
globals().pop("ctypes", None), globals().pop("libc", None), globals().pop("resource", None)
ROOT = os.path.realpath(os.getcwd())
source = open("program.py", encoding="utf-8").read()
REFUSED = frozenset((
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill",
    "os.killpg", "os.setsid", "os.chmod", "os.chown", "os.chroot", "subprocess.Popen", "pty.spawn",
    "os.putenv", "os.unsetenv", "signal.pthread_kill", "sys.remote_exec", "resource.setrlimit",
    "resource.prlimit",
))
MODULES = frozenset(("ctypes", "_ctypes", "_posixsubprocess", "subprocess", "multiprocessing", "pty", "socket",
                     "_socket", "ssl", "_ssl", "select", "selectors", "asyncio", "mmap", "resource"))
PATHS = frozenset(("os.remove", "os.rmdir", "os.rename", "os.replace", "os.link", "os.symlink",
                   "os.truncate", "os.mkdir", "shutil.rmtree", "os.utime", "shutil.copyfile", "shutil.move"))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
realpath, fspath, startswith = os.path.realpath, os.fspath, str.startswith
def inside(path):
    real = realpath(fspath(path)) if isinstance(path, (str, bytes, os.PathLike)) else None
    if isinstance(real, bytes):
        real = real.decode("utf-8", "replace")
    return real is None or real == ROOT or startswith(real, ROOT + os.sep)
def hook(event, args):
    if event in REFUSED or startswith(event, "socket.") or startswith(event, "ctypes."):
        raise PermissionError("sandbox refused " + event)
    if event == "import" and args[0].partition(".")[0] in MODULES:
        raise PermissionError("sandbox refused import " + args[0])
    if event == "open":
        path, mode, flags = args
        if isinstance(path, int):
            return
        real = realpath(fspath(path))
        real = real.decode("utf-8", "replace") if isinstance(real, bytes) else real
        if startswith(real, "/proc") or startswith(real, "/sys"):
            raise PermissionError("sandbox refused open " + real)
        writing = (mode is not None and any(c in str(mode) for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writing and not inside(path):
            raise PermissionError("sandbox refused open for writing " + real)
    elif event in PATHS:
        for value in args:
            if isinstance(value, (str, bytes, os.PathLike)) and not inside(value):
                raise PermissionError("sandbox refused " + event)
sys.addaudithook(hook)
del hook, limits
code = compile(source, "program.py", "exec")
del source
exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
"""


@dataclass(frozen=True)
class SandboxLimits:
    """Limits of one program's run (all must be positive).

    :param float cpu_seconds: CPU time (``SIGXCPU``, then ``SIGKILL`` a second later).
    :param float wall_seconds: wall-clock time before the process group is killed.
    :param int memory_mb: address space (allocations beyond it raise ``MemoryError``).
    :param int file_mb: the largest file it may write (its output included).
    :param bool network_namespace: try to run it in a new network namespace.
    """

    cpu_seconds: float = 5.0
    wall_seconds: float = 10.0
    memory_mb: int = 1024
    file_mb: int = 16
    network_namespace: bool = True

    def __post_init__(self):
        for name in ("cpu_seconds", "wall_seconds", "memory_mb", "file_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"sandbox limit {name} must be a positive number, got {value!r}")


@dataclass
class ExecutionResult:
    """What one program did: ``passed`` (exit status 0), the ``reason``, the exit status (negative:
    the signal), the wall time, the last lines of its standard error, and whether it ran in its own
    network namespace."""

    passed: bool
    reason: str
    returncode: Optional[int]
    seconds: float
    stderr_tail: str = ""
    network_namespace: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def _tail(path: Path, size: int = 2000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _reason(returncode: Optional[int], timed_out: bool, stderr: str) -> str:
    if timed_out:
        return "timeout"
    if returncode == 0:
        return "passed"
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "cpu time limit"
    if returncode == -signal.SIGXFSZ:
        return "file size limit"
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    if "sandbox refused" in stderr:
        refused = next(line for line in reversed(lines) if "sandbox refused" in line)
        detail = refused.split("sandbox refused", 1)[1].strip()
        return "refused: " + detail.split(" /")[0].split(" (")[0]
    if "File too large" in last or "[Errno 27]" in last:
        return "file size limit"
    if last.startswith("MemoryError") or "MemoryError" in last:
        return "memory limit"
    if returncode is not None and returncode < 0:
        return f"killed by signal {-returncode}"
    name = last.split(":", 1)[0].strip()
    return f"failed: {name}" if name.isidentifier() else f"failed: exit status {returncode}"


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _remove(folder: Path) -> None:
    def unlock(function, path, _):
        os.chmod(path, 0o700)
        function(path)

    shutil.rmtree(folder, onerror=unlock)


def run_program(source: str, limits: Optional[SandboxLimits] = None) -> ExecutionResult:
    """Run the Python program ``source`` under ``limits`` (see the module) and say how it ended."""
    limits = limits or SandboxLimits()
    folder = Path(tempfile.mkdtemp(prefix="pyro-monteclora-sandbox-"))
    try:
        (folder / "program.py").write_text(source, encoding="utf-8")
        environment = {"PATH": "/usr/bin:/bin", "HOME": str(folder), "TMPDIR": str(folder), "LANG": "C.UTF-8"}
        arguments = [
            str(int(max(1, round(limits.cpu_seconds)))),
            str(int(limits.memory_mb) * 2**20),
            str(int(limits.file_mb) * 2**20),
            "1" if limits.network_namespace else "0",
        ]
        started = time.perf_counter()
        with open(folder / "stdout.txt", "wb") as out, open(folder / "stderr.txt", "wb") as err:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", "-B", "-c", _BOOT, *arguments],
                cwd=folder,
                env=environment,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
            )
            timed_out = False
            try:
                process.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)
                process.wait()
        seconds = time.perf_counter() - started
        stderr = _tail(folder / "stderr.txt")
        namespace = _tail(folder / "namespace.txt", 8).strip() == "yes"
        reason = _reason(process.returncode, timed_out, stderr)
        return ExecutionResult(reason == "passed", reason, process.returncode, seconds, stderr[-500:], namespace)
    finally:
        _remove(folder)


def run_programs(
    sources: Iterable[str], limits: Optional[SandboxLimits] = None, workers: int = 2, progress: bool = False
) -> List[ExecutionResult]:
    """:func:`run_program` for every source, ``workers`` at a time, in order."""
    from pyro_monteclora.infer.predictive import progress_bar

    sources = list(sources)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda source: run_program(source, limits), sources)
        return list(progress_bar(results, f"execute {len(sources)} programs", progress))
