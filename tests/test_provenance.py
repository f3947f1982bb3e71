"""Results record the commit they were measured at (benchmarks/provenance.py), and the demo's
seed summary refuses to average runs of different commits (benchmarks/demo_seeds.py)."""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def load(name):
    if str(BENCHMARKS) not in sys.path:  # as `python benchmarks/x.py` has it
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git(folder, *args):
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=folder,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def repository(tmp_path):
    """A git repository with the project's layout and one commit."""
    root = tmp_path / "repo"
    for name in (
        "pyro_monteclora/core.py",
        "examples/demo.py",
        "benchmarks/bench.py",
        "benchmarks/results/bench.json",
        "README.md",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x = 1\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "first")
    return root


@needs_git
def test_records_the_commit_of_the_checkout(repository, monkeypatch):
    provenance = load("provenance")
    monkeypatch.delenv(provenance.COMMIT_VARIABLE, raising=False)
    head = git(repository, "rev-parse", "HEAD")
    record = provenance.provenance(repository / "benchmarks", argv=["bench.py", "--fast"])
    assert record["commit"] == head and len(head) == 40
    assert record["dirty"] is False
    assert record["command"] == ["bench.py", "--fast"]
    assert record["date"].endswith("+00:00")  # ISO 8601, UTC
    assert record["python"].count(".") == 2 and record["torch"]
    assert "CPUs" in record["machine"]
    json.dumps(record)  # it goes into result files as it is
    assert head in provenance.provenance_line(record)
    git(repository, "commit", "-q", "--allow-empty", "-m", "second")
    assert provenance.provenance(repository)["commit"] == git(repository, "rev-parse", "HEAD") != head


@needs_git
@pytest.mark.parametrize(
    "changed, dirty",
    [
        ("pyro_monteclora/core.py", True),
        ("examples/demo.py", True),
        ("benchmarks/bench.py", True),
        ("benchmarks/results/bench.json", False),  # make results rewrites it between its steps
        ("README.md", False),
    ],
)
def test_dirty_means_uncommitted_changes_to_the_measured_code(repository, changed, dirty):
    provenance = load("provenance")
    (repository / changed).write_text("x = 2\n")
    (repository / "pyro_monteclora" / "untracked.py").write_text("y = 1\n")  # never counts
    record = provenance.provenance(repository)
    assert record["dirty"] is dirty
    assert ("uncommitted changes" in provenance.provenance_line(record)) is dirty


def test_outside_git_the_commit_is_unknown(tmp_path, monkeypatch):
    provenance = load("provenance")
    monkeypatch.delenv(provenance.COMMIT_VARIABLE, raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # no repository above tmp_path either
    record = provenance.provenance(tmp_path, argv=["x"])
    assert record["commit"] == "unknown" and record["dirty"] is None
    assert provenance.provenance(tmp_path / "missing")["commit"] == "unknown"
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all: still a record, never an error
    assert provenance.provenance(tmp_path)["commit"] == "unknown"
    monkeypatch.setenv(provenance.COMMIT_VARIABLE, "abc123")  # a copy of the tree told its commit
    assert provenance.provenance(tmp_path)["commit"] == "abc123"


def write_run(folder: Path, seed: int, commit, accuracy: float) -> Path:
    record = {
        "settings": {"seed": seed, "epochs": 6},
        "environment": {"total_seconds": 400.0},
        "models": {"monteclora": {"accuracy": accuracy, "nll": 0.6}, "lora": {"accuracy": accuracy - 0.01, "nll": 0.8}},
    }
    if commit is not None:
        record["provenance"] = {"commit": commit, "dirty": False}
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def test_demo_seeds_aggregates_runs_of_one_commit(tmp_path):
    demo_seeds = load("demo_seeds")
    runs = [write_run(tmp_path / f"seed{s}", s, "a" * 40, 0.74 + 0.01 * s) for s in range(3)]
    status = demo_seeds.main(
        ["--aggregate", *map(str, runs), "--output", str(tmp_path / "out"), "--name", "demo_summary"]
    )
    assert status == 0
    summary = json.loads((tmp_path / "out" / "demo_summary.json").read_text())
    assert summary["commits"] == ["a" * 40] * 3 and summary["mixed_commits"] is False
    assert summary["seeds"] == [0, 1, 2]
    assert summary["models"]["monteclora"]["accuracy"]["mean"] == pytest.approx(0.75)
    assert summary["provenance"]["command"][:2] == ["benchmarks/demo_seeds.py", "--aggregate"]
    assert "a" * 40 in (tmp_path / "out" / "demo_summary.md").read_text()


@pytest.mark.parametrize("second", ["b" * 40, None])  # another commit, or a run without provenance
def test_demo_seeds_refuses_runs_of_different_commits(tmp_path, capsys, second):
    demo_seeds = load("demo_seeds")
    runs = [write_run(tmp_path / "seed0", 0, "a" * 40, 0.74), write_run(tmp_path / "seed1", 1, second, 0.75)]
    output = tmp_path / "out"
    with pytest.raises(demo_seeds.MixedCommitsError):
        demo_seeds.aggregate(runs)
    assert demo_seeds.main(["--aggregate", *map(str, runs), "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "different commits" in err and "--allow-mixed" in err and len(err.strip().splitlines()) == 1
    assert not output.exists()  # nothing written
    assert demo_seeds.main(["--aggregate", *map(str, runs), "--output", str(output), "--allow-mixed"]) == 0
    summary = json.loads((output / "summary.json").read_text())
    assert summary["mixed_commits"] is True and summary["commits"] == ["a" * 40, second or "unknown"]


def test_sweep_results_copies_the_summary_with_its_provenance(tmp_path):
    sweep_results = load("sweep_results")
    runs, results = tmp_path / "runs", tmp_path / "results"
    runs.mkdir()
    (runs / "summary.json").write_text(json.dumps({"summary": {"lora": {"cells": 1}}, "command": "sweep"}))
    (runs / "summary.md").write_text("title\n\n| method |\n")
    (runs / "sweep.json").write_text("{}")
    (runs / "checkpoint.safetensors").write_text("not copied")
    origin = {"commit": "c" * 40, "dirty": False, "date": "d", "command": ["sweep_results.py"]}
    sweep_results.collect(runs, results, origin, 125.0)
    summary = json.loads((results / "summary.json").read_text())
    assert summary["provenance"]["commit"] == "c" * 40 and summary["wall_seconds"] == 125.0
    assert summary["summary"] == {"lora": {"cells": 1}}
    assert "c" * 40 in (results / "summary.md").read_text()
    assert sorted(p.name for p in results.iterdir()) == ["summary.json", "summary.md", "sweep.json"]


def test_sweep_results_refuses_an_output_option(capsys):
    sweep_results = load("sweep_results")
    with pytest.raises(SystemExit) as raised:
        sweep_results.main(["--", "--methods", "lora", "--output", "somewhere"])
    assert raised.value.code == 2 and "--runs" in capsys.readouterr().err
