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
* installs a Python **audit hook** (:pep:`578`; it cannot be removed, and it keeps what it checks
  against in its own closure) that refuses process creation (``os.fork``, ``os.system``,
  ``subprocess``, ``os.exec*``, ``os.posix_spawn``, ``pty``), signals to other processes,
  ``ctypes`` and the modules that reach C calls without an audit event (``sqlite3``, ``readline``,
  shared memory, ``dbm``, ``signal``, ``fcntl``), every socket operation, writing, deleting,
  renaming or changing the mode of any path outside the program's working directory, opening a
  directory outside it (so no ``dir_fd`` escape), and reading ``/proc`` and ``/sys`` (another
  process's environment); ``os.mkfifo``, ``os.mknod``, ``os.pidfd_open`` and ``setsid`` are
  replaced by refusals;
* runs the program as a fresh ``__main__`` module, apart from the start-up code's names;
* asks the kernel to kill it if the evaluator dies (``PR_SET_PDEATHSIG``).

The parent gives it a fresh empty working directory (deleted afterwards), closed standard input,
an environment of ``PATH``, ``HOME``, ``TMPDIR`` and ``LANG`` only (no secrets to read), standard
output and error in files of that directory, and a wall-clock timeout. Every outcome is a
:class:`ExecutionResult` with a reason: ``passed``, ``failed: AssertionError``, ``failed: NameError``,
``timeout``, ``cpu time limit``, ``memory limit``, ``file size limit``, ``refused: import socket``,
``refused: os.fork``, ...

A program **passes only if it runs to its last line**: the start-up code reports completion through
a pipe after the program returns, so a ``sys.exit(0)`` or ``os._exit(0)`` before the tests' end is a
failure (``left early``), and a program cannot forge the network-namespace report in a file.

**What it does not protect against**: it is a guard against runaway and careless code, and against
the obvious hostile calls, not a security boundary. The hook and the refused functions live in the
same interpreter as the program: code written to escape can reach them (through ``gc`` and the
hook's closure, by replacing functions of the standard-library modules the hook calls, such as
``os.path``'s, or through an interpreter bug), and C extensions that write files without an audit
event are not covered beyond the modules refused. A process running as root ignores
``RLIMIT_NPROC``. It may still **read** any file the user can read (without the network it cannot
send it anywhere, unless the namespace was refused and the hook is defeated), and it shares the
machine's CPU and memory within its limits. For untrusted models, run the whole evaluation inside a
container or VM with no network and no credentials (a kernel sandbox such as bubblewrap, Landlock
or seccomp is the boundary this module is not).

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
def _sandbox(argv):
    import os, posix, resource, sys, types, _signal
    cpu, memory, file_size, try_namespace, report = (int(v) for v in argv[1:6])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (ValueError, OSError):
        pass
    namespace = b"ns=no\n"
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG: SIGKILL when the evaluator dies
        if try_namespace:
            for flags in (0x40000000, 0x40000000 | 0x10000000):  # CLONE_NEWNET, + CLONE_NEWUSER
                if libc.unshare(flags) == 0:
                    namespace = b"ns=yes\n"
                    break
        del ctypes, libc
    except Exception:
        pass
    os.write(report, namespace)
    def refuse(*args, **kwargs):
        raise PermissionError("sandbox refused a call outside its folder")
    for module in (os, posix):  # calls that no audit event covers
        for name in ("mkfifo", "mknod", "pidfd_open", "setsid", "setpgid", "chroot", "setuid", "setgid"):
            if hasattr(module, name):
                setattr(module, name, refuse)
    for name in ("pidfd_send_signal", "pthread_kill", "sigqueue"):
        if hasattr(_signal, name):
            setattr(_signal, name, refuse)
    for name in ("ctypes", "_ctypes", "ctypes._endian", "resource"):  # a new import of them is refused below
        sys.modules.pop(name, None)
    root = os.path.realpath(os.getcwd())
    with open("program.py", encoding="utf-8") as handle:
        code = compile(handle.read(), "program.py", "exec")
    refused = frozenset((
        "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.kill",
        "os.killpg", "os.chmod", "os.chown", "os.chroot", "subprocess.Popen", "pty.spawn", "os.putenv",
        "os.unsetenv", "signal.pthread_kill", "sys.remote_exec", "resource.setrlimit", "resource.prlimit",
        "os.setsid",
    ))
    modules = frozenset((
        "ctypes", "_ctypes", "_posixsubprocess", "subprocess", "multiprocessing", "pty", "socket", "_socket",
        "ssl", "_ssl", "select", "selectors", "asyncio", "mmap", "resource", "sqlite3", "_sqlite3", "readline",
        "_posixshmem", "dbm", "_dbm", "_gdbm", "shelve", "signal", "_multiprocessing", "fcntl", "termios",
    ))
    paths = frozenset((
        "os.remove", "os.rmdir", "os.rename", "os.replace", "os.link", "os.symlink", "os.truncate", "os.mkdir",
        "shutil.rmtree", "os.utime", "shutil.copyfile", "shutil.move",
    ))
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    realpath, fspath, isdir, sep = os.path.realpath, os.fspath, os.path.isdir, os.sep
    is_instance, path_types, text, startswith = isinstance, (str, bytes, os.PathLike), str, str.startswith
    def resolved(path):
        real = realpath(fspath(path))
        return real.decode("utf-8", "replace") if is_instance(real, bytes) else real
    def inside(real):
        return real == root or startswith(real, root + sep)
    def hook(event, args):
        if event in refused or startswith(event, "socket.") or startswith(event, "ctypes."):
            raise PermissionError("sandbox refused " + event)
        if event == "import" and args[0].partition(".")[0] in modules:
            raise PermissionError("sandbox refused import " + args[0])
        if event == "open":
            path, mode, flags = args
            if is_instance(path, int):
                return
            real = resolved(path)
            if startswith(real, "/proc") or startswith(real, "/sys"):
                raise PermissionError("sandbox refused open " + real)
            if not inside(real) and isdir(real):  # no directory descriptor outside (dir_fd=)
                raise PermissionError("sandbox refused open " + real)
            writing = (mode is not None and any(c in text(mode) for c in "wax+")) or bool((flags or 0) & write_flags)
            if writing and not inside(real):
                raise PermissionError("sandbox refused open for writing " + real)
        elif event in paths:
            for value in args:
                if is_instance(value, path_types) and not inside(resolved(value)):
                    raise PermissionError("sandbox refused " + event)
    sys.addaudithook(hook)
    program = types.ModuleType("__main__")
    sys.modules["__main__"] = program  # the program sees its own module, not this one
    try:
        exec(code, program.__dict__)
    except SystemExit as stop:
        raise SystemExit(f"the program left early (SystemExit({stop.code!r}))") from None
    os.write(report, b"completed\n")
import sys
_sandbox(sys.argv)
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
    if "the program left early" in stderr:
        return "left early (SystemExit)"
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
    """Delete the program's folder whatever modes it left (never raising: a leftover is not worth a run)."""
    try:
        for directory, _, _ in os.walk(folder):
            os.chmod(directory, 0o700)
    except OSError:
        pass
    shutil.rmtree(folder, ignore_errors=True)


def run_program(source: str, limits: Optional[SandboxLimits] = None) -> ExecutionResult:
    """Run the Python program ``source`` under ``limits`` (see the module) and say how it ended.

    It passes only if it ran to its last line: the start-up code reports completion through a pipe
    after the program returns, so ``sys.exit(0)`` or ``os._exit(0)`` before the end is a failure.
    """
    limits = limits or SandboxLimits()
    folder = Path(tempfile.mkdtemp(prefix="pyro-monteclora-sandbox-"))
    read_end, write_end = os.pipe()
    try:
        (folder / "program.py").write_text(source, encoding="utf-8")
        environment = {"PATH": "/usr/bin:/bin", "HOME": str(folder), "TMPDIR": str(folder), "LANG": "C.UTF-8"}
        arguments = [
            str(int(max(1, round(limits.cpu_seconds)))),
            str(int(limits.memory_mb) * 2**20),
            str(int(limits.file_mb) * 2**20),
            "1" if limits.network_namespace else "0",
            str(write_end),
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
                pass_fds=(write_end,),
            )
            os.close(write_end)
            write_end = None
            timed_out = False
            try:
                process.wait(timeout=limits.wall_seconds)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(process)
                process.wait()
        seconds = time.perf_counter() - started
        report = _read_all(read_end)
        stderr = _tail(folder / "stderr.txt")
        completed = "completed" in report.split()
        reason = _reason(process.returncode, timed_out, stderr)
        if reason == "passed" and not completed:
            reason = "left early (exit before the end)"
        return ExecutionResult(
            reason == "passed", reason, process.returncode, seconds, stderr[-500:], "ns=yes" in report
        )
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)
        _remove(folder)


def _read_all(descriptor: int, limit: int = 4096) -> str:
    """What the start-up code reported (the writers are gone: the group was killed)."""
    os.set_blocking(descriptor, False)
    chunks = []
    try:
        while sum(map(len, chunks)) < limit:
            chunk = os.read(descriptor, 512)
            if not chunk:
                break
            chunks.append(chunk)
    except BlockingIOError:
        pass
    return b"".join(chunks).decode("ascii", "replace")


def run_programs(
    sources: Iterable[str], limits: Optional[SandboxLimits] = None, workers: int = 2, progress: bool = False
) -> List[ExecutionResult]:
    """:func:`run_program` for every source, ``workers`` at a time, in order."""
    from pyro_monteclora.infer.predictive import progress_bar

    sources = list(sources)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(run_program, source, limits) for source in sources]
        return [future.result() for future in progress_bar(futures, f"execute {len(sources)} programs", progress)]
    finally:  # on an interrupt, the queued programs never start; the running ones end within their limits
        pool.shutdown(wait=True, cancel_futures=True)
