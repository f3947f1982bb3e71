"""Issue 21: what the commands write, and what they refuse to overwrite.

``--overwrite`` never deletes what the command reads; a run folder is written by one process at a
time (a killed one leaves no stuck lock); a checkpoint with NaN weights is refused and NaN numbers
are written as ``null``; two outputs never share a file. Each refusal is one line on stderr and
exit status 2 with nothing on disk changed. The data side of the same issue is
``test_reliability_data.py``, whose helpers and ``run`` fixture these tests share.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_bert_classifier
from safetensors.torch import load_file, save_file
from test_cli import data_dir, model_dir, snapshot, write_jsonl  # noqa: F401 (fixtures)
from test_cli_decoders import decoder_dir  # noqa: F401 (fixture)
from test_reliability_data import refused, run, tiny_train  # noqa: F401 (fixture)

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.cli import main
from pyro_monteclora.storage.checkpoint import CheckpointError, load_pretrained, save_pretrained


def strict_json(text: str):
    """``json.loads`` that refuses NaN and infinities (as every other JSON reader does)."""

    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=no_constant)


def _old_run(folder: Path) -> Path:
    """A folder --overwrite may replace: it holds a run.json (from an earlier run)."""
    folder.mkdir(parents=True)
    (folder / "run.json").write_text("{}")
    return folder


# -- 1. --overwrite never deletes what the command reads -----------------------------------------


def test_overwrite_refuses_a_run_folder_that_holds_the_training_data(model_dir, data_dir, tmp_path, capsys):  # noqa: F811
    output = _old_run(tmp_path / "myrun")
    shutil.copy(data_dir / "train.jsonl", output / "train.jsonl")
    link = tmp_path / "link.jsonl"
    link.symlink_to(output / "train.jsonl")
    before = snapshot(tmp_path)
    refused(
        capsys,
        tiny_train(model_dir, output / "train.jsonl", output, "--overwrite"),
        r"--output .*myrun holds --train-file .*train\.jsonl, which this command reads",
    )
    # through a symbolic link that resolves inside the folder, and a relative path to it
    refused(capsys, tiny_train(model_dir, link, output, "--overwrite"), r"holds --train-file")
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        refused(
            capsys, tiny_train(model_dir, "myrun/train.jsonl", "./myrun/../myrun", "--overwrite"), r"holds --train-file"
        )
    finally:
        os.chdir(cwd)
    assert snapshot(tmp_path) == before


def test_overwrite_refuses_a_run_folder_that_holds_the_model_or_a_test_file(model_dir, data_dir, tmp_path, capsys):  # noqa: F811
    output = _old_run(tmp_path / "myrun")
    shutil.copytree(model_dir, output / "base")
    shutil.copy(data_dir / "test.jsonl", output / "test.jsonl")
    before = snapshot(tmp_path)
    refused(
        capsys, tiny_train(output / "base", data_dir / "train.jsonl", output, "--overwrite"), r"holds --model .*base"
    )
    refused(
        capsys,
        tiny_train(
            model_dir, data_dir / "train.jsonl", output, "--overwrite", "--test-file", str(output / "test.jsonl")
        ),
        r"holds --test-file",
    )
    assert snapshot(tmp_path) == before


def test_sweep_overwrite_refuses_a_folder_that_holds_its_data(model_dir, data_dir, tmp_path, capsys):  # noqa: F811
    output = tmp_path / "grid"
    output.mkdir()
    (output / "sweep.json").write_text("{}")
    shutil.copy(data_dir / "train.jsonl", output / "train.jsonl")
    before = snapshot(tmp_path)
    refused(
        capsys,
        [
            "sweep",
            "--model",
            str(model_dir),
            "--train-file",
            str(output / "train.jsonl"),
            "--test-file",
            str(data_dir / "test.jsonl"),
            "--methods",
            "lora",
            "--learning-rates",
            "0.01",
            "--batch-sizes",
            "8",
            "--epochs",
            "1",
            "--max-length",
            "16",
            "--rank",
            "4",
            "--output",
            str(output),
            "--overwrite",
        ],
        r"holds --train-file",
    )
    assert snapshot(tmp_path) == before


def test_evaluate_overwrite_refuses_a_folder_that_holds_the_checkpoint_or_the_data(run, data_dir, tmp_path, capsys):  # noqa: F811
    results = tmp_path / "results"
    results.mkdir()
    (results / "metrics.json").write_text("{}")  # an earlier evaluation: --overwrite may replace it
    shutil.copytree(run, results / "run")
    shutil.copy(data_dir / "test.jsonl", results / "test.jsonl")
    before = snapshot(tmp_path)
    refused(
        capsys,
        [
            "evaluate",
            "--checkpoint",
            str(results / "run"),
            "--output",
            str(results),
            "--overwrite",
            "--test-file",
            str(data_dir / "test.jsonl"),
        ],
        r"holds --checkpoint .*run/checkpoint",
    )
    refused(
        capsys,
        [
            "evaluate",
            "--checkpoint",
            str(run),
            "--output",
            str(results),
            "--overwrite",
            "--test-file",
            str(results / "test.jsonl"),
        ],
        r"holds the test data",
    )
    assert snapshot(tmp_path) == before


def test_predict_and_generate_refuse_to_overwrite_their_own_input(run, decoder_dir, tmp_path, capsys):  # noqa: F811
    texts = tmp_path / "texts.txt"
    texts.write_text("a film good\na film bad\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("capital ?\n")
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = snapshot(tmp_path)
    refused(
        capsys,
        ["predict", "--checkpoint", str(run), "--input", str(texts), "--output", str(texts), "--overwrite"],
        r"--output .*texts\.txt would replace --input",
    )
    refused(
        capsys,
        [
            "predict",
            "--checkpoint",
            str(copy),
            "--input",
            str(texts),
            "--overwrite",
            "--output",
            str(copy / "checkpoint" / "model.safetensors"),
        ],
        r"would replace --checkpoint|inside the run .*checkpoint/",
    )  # either check refuses it first
    refused(
        capsys,
        [
            "generate",
            "--model",
            str(decoder_dir),
            "--prompt-file",
            str(prompts),
            "--max-new-tokens",
            "2",
            "--output",
            str(prompts),
            "--overwrite",
        ],
        r"would replace --prompt-file",
    )
    assert snapshot(tmp_path) == before
    # a new file in the run folder, next to the checkpoint, is fine
    assert (
        main(
            [
                "predict",
                "--checkpoint",
                str(copy),
                "--input",
                str(texts),
                "--num-samples",
                "0",
                "--output",
                str(copy / "predictions.jsonl"),
            ]
        )
        == 0
    )
    assert len((copy / "predictions.jsonl").read_text().splitlines()) == 2


# -- 2. one process per run folder ----------------------------------------------------------------

HOLD = (
    "import sys; from pyro_monteclora.storage.atomic import FolderLock; FolderLock(sys.argv[1]).acquire(); "
    "print('held', flush=True); sys.stdin.read()"
)


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_the_folder_lock_is_exclusive_between_processes_and_dies_with_its_holder(tmp_path):
    from pyro_monteclora.storage.atomic import LOCK_NAME, FolderInUse, FolderLock, clear_folder, folder_in_use

    folder = tmp_path / "run"
    holder = _holder(folder)
    try:
        assert folder_in_use(folder)
        with pytest.raises(FolderInUse, match=r"run is in use by another process"):
            FolderLock(folder).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (folder / LOCK_NAME).exists()  # a kill -9 leaves the file, but not the lock
    assert not folder_in_use(folder)
    with FolderLock(folder) as lock:
        assert lock.held and folder_in_use(folder)
        (folder / "x").mkdir()
        (folder / "y.txt").write_text("y")
        clear_folder(folder)  # what --overwrite does under the lock: the lock file stays
        assert [p.name for p in folder.iterdir()] == [LOCK_NAME] and folder_in_use(folder)
    assert list(folder.iterdir()) == [] and not folder_in_use(folder)


def test_train_and_sweep_refuse_a_folder_another_process_holds(model_dir, data_dir, tmp_path, capsys):  # noqa: F811
    from pyro_monteclora.storage.atomic import folder_in_use

    output = _old_run(tmp_path / "run")
    holder = _holder(output)
    assert folder_in_use(output)
    try:
        before = snapshot(tmp_path)
        train = tiny_train(model_dir, data_dir / "train.jsonl", output)
        for extra in ([], ["--overwrite"], ["--resume"]):
            refused(capsys, train + extra, r"--output .*run is in use by another process")
        refused(
            capsys,
            [
                "sweep",
                "--model",
                str(model_dir),
                "--train-file",
                str(data_dir / "train.jsonl"),
                "--test-file",
                str(data_dir / "test.jsonl"),
                "--methods",
                "lora",
                "--output",
                str(output),
                "--overwrite",
            ],
            r"in use by another process",
        )
        assert snapshot(tmp_path) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert main(train + ["--overwrite"]) == 0  # the killed holder left no stuck lock
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint", "run.json", "train_summary.json"]


def test_a_second_train_into_a_running_runs_folder_exits_2(model_dir, data_dir, tmp_path, capsys):  # noqa: F811
    """Two real train processes: while the first writes its run folder, a second (plain,
    --overwrite or --resume) is refused; once the first is killed with SIGKILL, the folder is
    usable again."""
    output = tmp_path / "run"
    argv = tiny_train(model_dir, data_dir / "train.jsonl", output, "--epochs", "400")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "pyro_monteclora", *argv], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not (output / "checkpoint" / "training_state.json").is_file():
            assert first.poll() is None and time.monotonic() < deadline, "the first run did not start"
            time.sleep(0.05)
        for extra in ([], ["--overwrite"], ["--resume"]):
            refused(capsys, argv + extra, r"in use by another process")
        assert first.poll() is None  # still training, in a folder nobody else touched
        assert json.loads((output / "run.json").read_text())["arguments"]["epochs"] == 400
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    assert main(tiny_train(model_dir, data_dir / "train.jsonl", output, "--overwrite")) == 0
    assert json.loads((output / "run.json").read_text())["arguments"]["epochs"] == 1
    assert sorted(p.name for p in output.iterdir()) == ["checkpoint", "run.json", "train_summary.json"]


def test_under_the_lock_a_folder_filled_since_the_checks_is_not_replaced(tmp_path):
    """The lock is taken after the model is loaded; a folder another run filled (and finished)
    in between is checked again, not deleted."""
    from pyro_monteclora.cli.options import UsageError
    from pyro_monteclora.cli.outputs import lock_output_folder
    from pyro_monteclora.storage.atomic import folder_in_use

    output = tmp_path / "run"
    output.mkdir()
    (output / "run.json").write_text("{}")
    args = argparse.Namespace(resume=False, overwrite=False)
    with pytest.raises(UsageError, match=r"already exists; pass --overwrite"):
        lock_output_folder(output, args, "run.json", "run")
    assert [p.name for p in output.iterdir()] == ["run.json"] and not folder_in_use(output)


# -- 6. NaN weights and strict JSON ----------------------------------------------------------------


def _poison(folder: Path, name_part: str, value: float) -> str:
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    name = next(n for n in tensors if name_part in n)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = value
    save_file(tensors, str(path), metadata={"format": "pt"})
    return name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_checkpoint_with_non_finite_weights_is_refused_on_load(tmp_path, value):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, modules_to_save=["classifier"]))
    MonteCLoRAGuide(model)
    folder = save_pretrained(model, tmp_path / "saved")
    name = _poison(folder, "lora_B", value)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor '{name}' holds NaN or infinite"):
        load_pretrained(folder, base_model=tiny_bert_classifier())


def test_evaluate_refuses_nan_weights_in_one_line(run, data_dir, tmp_path, capsys):  # noqa: F811
    damaged = tmp_path / "damaged"
    shutil.copytree(run, damaged)
    _poison(damaged / "checkpoint", "classifier", float("nan"))
    texts = tmp_path / "texts.txt"
    texts.write_text("a film\n")
    before = snapshot(tmp_path)
    refused(
        capsys,
        ["evaluate", "--checkpoint", str(damaged), "--num-samples", "0", "--test-file", str(data_dir / "test.jsonl")],
        r"model\.safetensors: tensor 'network\..*classifier.*' holds NaN or infinite values",
    )
    refused(capsys, ["predict", "--checkpoint", str(damaged), "--input", str(texts)], r"holds NaN")
    assert snapshot(tmp_path) == before


def test_non_finite_numbers_are_written_as_null(run, data_dir, tmp_path, monkeypatch, capsys):  # noqa: F811
    import pyro_monteclora.infer.methods as predictive  # where evaluate and predict call predict()

    real = predictive.predict

    def nan_predict(*args, **kwargs):
        result = real(*args, **kwargs)
        result.probs[0] = float("nan")
        result.mutual_information[1] = float("inf")
        return result

    monkeypatch.setattr(predictive, "predict", nan_predict)
    output = tmp_path / "evaluation"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run),
                "--num-samples",
                "0",
                "--output",
                str(output),
                "--test-file",
                str(data_dir / "test.jsonl"),
            ]
        )
        == 0
    )
    rows = [strict_json(line) for line in (output / "predictions.jsonl").read_text().splitlines()]
    assert set(rows[0]["probabilities"].values()) == {None} and rows[1]["mutual_information"] is None
    strict_json((output / "metrics.json").read_text())
    capsys.readouterr()
    texts = tmp_path / "texts.txt"
    texts.write_text("a film good\na film bad\n")
    assert main(["predict", "--checkpoint", str(run), "--input", str(texts), "--num-samples", "0"]) == 0
    lines = [strict_json(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 and lines[1]["mutual_information"] is None


# -- 8. two outputs, one file --------------------------------------------------------------------------


def test_generate_refuses_the_same_file_for_output_and_metrics(decoder_dir, tmp_path, capsys):  # noqa: F811
    work = tmp_path / "work"
    work.mkdir()
    prompts = write_jsonl(work / "qa.jsonl", [{"question": "capital ?", "answer": "lima"}])
    both = work / "both.json"
    link = tmp_path / "link.json"  # outside work/: it dangles until both.json exists
    link.symlink_to(both)
    base = ["generate", "--model", str(decoder_dir), "--prompt-file", str(prompts), "--max-new-tokens", "2"]
    before = snapshot(work)
    refused(
        capsys, base + ["--output", str(both), "--metrics", str(both)], r"--output and --metrics name the same file"
    )
    # a link to --output's path: the same file (or, while that file does not exist, a dangling link)
    refused(
        capsys, base + ["--output", str(both), "--metrics", str(link)], r"name the same file|symbolic link to nowhere"
    )
    refused(capsys, base + ["--output", str(both), "--metrics", str(work / "." / "both.json")], r"name the same file")
    refused(capsys, base + ["--metrics", "-"], r"--metrics - : give a file name")
    assert snapshot(work) == before
    assert main(base + ["--output", str(work / "gen.jsonl"), "--metrics", str(both)]) == 0
    assert strict_json(both.read_text())["prompts"] == 1
    assert len((work / "gen.jsonl").read_text().splitlines()) == 1
