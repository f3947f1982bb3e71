"""``pyro-monteclora sweep`` on a tiny random BERT: every cell in its own process, the summary
against hand-computed statistics, resume after an interruption, no state carried between cells,
and bad input refused before anything runs."""

import json
import math
import os
import subprocess
import sys

import pytest
from test_cli import data_dir, model_dir, snapshot  # noqa: F401 (module fixtures)

from pyro_monteclora.cli import main
from pyro_monteclora.evaluation.sweep import summarize, summary_markdown, sweep_grid


def sweep_args(model_dir, data_dir, output, *extra):
    return [
        "sweep",
        "--model",
        str(model_dir),
        "--train-file",
        str(data_dir / "train.jsonl"),
        "--test-file",
        str(data_dir / "test.jsonl"),
        "--rank",
        "4",
        "--max-length",
        "16",
        "--epochs",
        "1",
        "--num-samples",
        "3",
        "--output",
        str(output),
        *extra,
    ]


def test_summary_statistics_are_the_hand_computed_ones():
    rows = [
        {"method": "lora", "status": "ok", "metrics": {"accuracy": a, "nll": n}}
        for a, n in ((0.70, 0.60), (0.90, 0.40), (0.50, 1.20), (0.80, 0.50))
    ]
    rows.append({"method": "lora", "status": "diverged"})
    rows.append({"method": "full", "status": "ok", "metrics": {"accuracy": 0.6, "nll": 0.7}})
    summary = summarize(rows, ["accuracy", "nll"])
    lora = summary["lora"]
    assert lora["cells"] == 5 and lora["failed"] == 1 and lora["accuracy"]["cells"] == 4
    mean = (0.7 + 0.9 + 0.5 + 0.8) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in (0.7, 0.9, 0.5, 0.8)) / 3)
    assert lora["accuracy"]["best"] == 0.9 and lora["accuracy"]["worst"] == 0.5
    assert lora["accuracy"]["median"] == pytest.approx(0.75) and lora["accuracy"]["spread"] == pytest.approx(0.4)
    assert lora["accuracy"]["std"] == pytest.approx(std)
    assert lora["nll"]["best"] == 0.4 and lora["nll"]["worst"] == 1.2  # lower is better
    assert lora["nll"]["median"] == pytest.approx(0.55)
    assert summary["full"]["accuracy"]["std"] == 0.0 and summary["full"]["accuracy"]["spread"] == 0.0
    table = summary_markdown(summary, ["accuracy", "nll"])
    assert "| lora | accuracy | 0.9000 | 0.7500 | 0.5000 | 0.4000 |" in table
    assert "4 (1 failed)" in table


def test_the_grid_takes_its_own_rates_for_full_fine_tuning():
    cells = sweep_grid(
        ["monteclora", "full"],
        [1e-3, 5e-4],
        [16, 32],
        [0, 1],
        {"full": {"learning_rates": [5e-5], "batch_sizes": None}},
    )
    assert len(cells) == 2 * 2 * 2 + 1 * 2 * 2
    assert {c.learning_rate for c in cells if c.method == "full"} == {5e-5}
    assert len({c.name for c in cells}) == len(cells)


@pytest.fixture(scope="module")
def finished_sweep(model_dir, data_dir, tmp_path_factory):  # noqa: F811
    output = tmp_path_factory.mktemp("sweeps") / "grid"
    status = main(
        sweep_args(
            model_dir,
            data_dir,
            output,
            "--methods",
            "monteclora,lora",
            "--learning-rates",
            "0.05,0.01",
            "--batch-sizes",
            "8",
        )
    )
    assert status == 0
    return output


def test_every_cell_is_trained_evaluated_summarised_and_plotted(finished_sweep):
    output = finished_sweep
    summary = json.loads((output / "summary.json").read_text())
    names = [r["name"] for r in summary["results"]]
    assert names == [
        "monteclora-lr0.05-bs8-seed0",
        "monteclora-lr0.01-bs8-seed0",
        "lora-lr0.05-bs8-seed0",
        "lora-lr0.01-bs8-seed0",
    ]
    for row in summary["results"]:
        evaluation = json.loads((output / "cells" / row["name"] / "evaluation" / "metrics.json").read_text())
        assert row["status"] == "ok" and row["metrics"]["nll"] == evaluation["metrics"]["nll"]
        assert evaluation["num_samples"] == (3 if row["method"] == "monteclora" else 0)
        run = json.loads((output / "cells" / row["name"] / "run.json").read_text())["arguments"]
        assert (run["method"], run["learning_rate"], run["batch_size"]) == (
            row["method"],
            row["learning_rate"],
            row["batch_size"],
        )
    assert summary["metrics"] == ["accuracy", "nll", "ece"]
    lora = [r["metrics"]["accuracy"] for r in summary["results"] if r["method"] == "lora"]
    assert summary["summary"]["lora"]["accuracy"]["spread"] == pytest.approx(max(lora) - min(lora))
    table = (output / "summary.md").read_text()
    assert "| monteclora | accuracy |" in table and "| lora | nll |" in table
    assert (output / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_cell_carries_no_state_from_the_cells_before_it(finished_sweep, model_dir, data_dir, tmp_path):  # noqa: F811
    """lora at 0.01 ran after three other cells (two of them MonteCLoRA, with Pyro's parameter store
    and random state); alone, it gives the very same numbers."""
    alone = tmp_path / "alone"
    assert (
        main(
            sweep_args(
                model_dir, data_dir, alone, "--methods", "lora", "--learning-rates", "0.01", "--batch-sizes", "8"
            )
        )
        == 0
    )
    name = "lora-lr0.01-bs8-seed0"
    after = json.loads((finished_sweep / "results" / f"{name}.json").read_text())["metrics"]
    assert json.loads((alone / "results" / f"{name}.json").read_text())["metrics"] == after


def test_an_interrupted_sweep_resumes_where_it_stopped(model_dir, data_dir, tmp_path):  # noqa: F811
    output = tmp_path / "grid"
    args = sweep_args(
        model_dir,
        data_dir,
        output,
        "--methods",
        "monteclora,lora",
        "--learning-rates",
        "0.02",
        "--batch-sizes",
        "8",
        "--epochs",
        "2",
    )
    assert main(args) == 0
    before = json.loads((output / "summary.json").read_text())["results"]
    kept = output / "results" / "monteclora-lr0.02-bs8-seed0.json"
    kept_mtime = os.stat(kept).st_mtime_ns
    # the lora cell as a kill in its second epoch leaves it: one checkpoint, no summary, no result
    cell = output / "cells" / "lora-lr0.02-bs8-seed0"
    for name in ("train_summary.json",):
        (cell / name).unlink()
    import shutil

    shutil.rmtree(cell / "evaluation")
    (output / "results" / "lora-lr0.02-bs8-seed0.json").unlink()
    state = json.loads((cell / "checkpoint" / "training_state.json").read_text())
    assert state["epoch"] == 2

    assert main(args) == 2  # an existing sweep is not replaced silently
    assert main(args + ["--resume"]) == 0
    plan = json.loads((output / "plans" / "lora-lr0.02-bs8-seed0.json").read_text())
    assert plan["train"][-1] == "--resume" and plan["evaluate"] is not None
    assert os.stat(kept).st_mtime_ns == kept_mtime  # the finished cell did not run again
    after = json.loads((output / "summary.json").read_text())["results"]
    assert [r["metrics"] for r in after] == [r["metrics"] for r in before]
    changed = sweep_args(
        model_dir,
        data_dir,
        output,
        "--methods",
        "lora",
        "--learning-rates",
        "0.02",
        "--batch-sizes",
        "8",
        "--epochs",
        "2",
        "--resume",
    )
    assert main(changed) == 2


def test_a_sweep_killed_mid_way_resumes_and_ends_as_an_uninterrupted_one(
    finished_sweep,
    model_dir,  # noqa: F811
    data_dir,
    tmp_path,
):
    """A real SIGKILL of the sweep and the cell it is running (the whole process group) once the
    first cell is done; --resume then ends with exactly the uninterrupted sweep's numbers."""
    import signal
    import time

    output = tmp_path / "killed"
    args = sweep_args(
        model_dir,
        data_dir,
        output,
        "--methods",
        "monteclora,lora",
        "--learning-rates",
        "0.05,0.01",
        "--batch-sizes",
        "8",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "pyro_monteclora", *args],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if (output / "results").is_dir() and any((output / "results").iterdir()):
            break
        time.sleep(0.2)
    assert process.poll() is None, "the sweep ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done = sorted(p.name for p in (output / "results").iterdir())
    assert 1 <= len(done) < 4 and not (output / "summary.json").exists()
    assert main(args + ["--resume"]) == 0
    resumed = json.loads((output / "summary.json").read_text())["results"]
    reference = json.loads((finished_sweep / "summary.json").read_text())["results"]
    assert [(r["name"], r["metrics"]) for r in resumed] == [(r["name"], r["metrics"]) for r in reference]


def test_a_diverging_cell_is_recorded_and_the_sweep_goes_on(model_dir, data_dir, tmp_path):  # noqa: F811
    output = tmp_path / "grid"
    assert (
        main(
            sweep_args(
                model_dir, data_dir, output, "--methods", "lora", "--learning-rates", "1e30", "--batch-sizes", "8"
            )
        )
        == 0
    )
    result = json.loads((output / "results" / "lora-lr1e+30-bs8-seed0.json").read_text())
    assert result["status"] == "diverged" and "the loss is nan" in result["error"]
    summary = json.loads((output / "summary.json").read_text())["summary"]
    assert summary["lora"] == {"cells": 1, "failed": 1}
    assert not (output / "sweep.png").exists()  # nothing finished to plot


@pytest.mark.parametrize(
    "name,extra,pattern",
    [
        (
            "unknown method",
            ["--methods", "lora,bayes"],
            r"--methods: 'lora,bayes'; give distinct names from monteclora, lora, full",
        ),
        ("a rate that is not a number", ["--learning-rates", "1e-3,fast"], r"--learning-rates: 'fast' is not a number"),
        ("a rate of zero", ["--learning-rates=1e-3,0"], r"--learning-rates: 0 must be > 0"),
        ("a repeated batch size", ["--batch-sizes", "8,8"], r"--batch-sizes: 8 is given twice"),
        ("full rates without full", ["--methods", "lora", "--full-learning-rates", "1e-5"], r"need full in --methods"),
        ("a bad adapter option", ["--rank", "0"], r"--rank must be an integer >= 1"),
        ("a bad prior option", ["--wishart-df", "2"], r"--wishart-df must be a finite number > rank - 1 = 3, got 2.0"),
        ("no labelled test data", ["--split", "validation"], r"no labelled validation data"),
        ("a classification task as causal-lm", ["--task-type", "causal-lm"], r"causal-lm data|prompt"),
        ("two cells in one folder", ["--learning-rates", "1e-3,1.0000001e-3"], r"two cells would share the folder"),
    ],
)
def test_bad_input_exits_2_with_one_line_before_any_cell(
    model_dir,
    data_dir,
    tmp_path,
    capsys,  # noqa: F811
    name,
    extra,
    pattern,
):
    import re

    output = tmp_path / "grid"
    status = main(sweep_args(model_dir, data_dir, output, *extra))
    err = capsys.readouterr().err.strip()
    assert status == 2, (name, err)
    assert err.startswith("pyro-monteclora sweep: error:") and "\n" not in err, (name, err)
    assert re.search(pattern, err), (name, err)
    assert not output.exists()


def test_an_existing_folder_that_is_not_a_sweep_is_never_deleted(model_dir, data_dir, tmp_path, capsys):  # noqa: F811
    output = tmp_path / "precious"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    before = snapshot(output)
    assert main(sweep_args(model_dir, data_dir, output, "--overwrite")) == 2
    assert "not a sweep folder" in capsys.readouterr().err
    assert snapshot(output) == before


def test_the_sweep_command_is_listed_in_the_help():
    result = subprocess.run(
        [sys.executable, "-m", "pyro_monteclora", "sweep", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "--learning-rates" in result.stdout and "--full-learning-rates" in result.stdout


def test_a_cell_that_crashes_is_not_taken_for_a_diverged_one(tmp_path, monkeypatch, capsys):
    """Only a non-finite loss (exit 1) is an outcome of the setting; an exception (out of memory, a
    network error, a bug) is a crash that --resume retries."""
    import pyro_monteclora.cli as cli
    from pyro_monteclora.cli import CELL_CRASHED, run_cell
    from pyro_monteclora.cli.sweep import _cell_result
    from pyro_monteclora.evaluation.sweep import SweepCell

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"train": ["train", "--output", "x"], "evaluate": None}))

    def crash(argv, **options):
        raise MemoryError("out of memory")

    monkeypatch.setattr(cli, "main", crash)
    assert run_cell(str(plan)) == CELL_CRASHED
    assert "MemoryError: out of memory" in capsys.readouterr().err
    log = tmp_path / "cell.log"
    log.write_text("...\npyro-monteclora train: error: fit(): the loss is nan at step 3\n")
    cell = SweepCell("lora", 1e-3, 8, 0)
    assert _cell_result(cell, tmp_path, CELL_CRASHED, log) is None
    assert _cell_result(cell, tmp_path, 1, log)["status"] == "diverged"
