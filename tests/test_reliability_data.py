"""Issue 21, items 1-8: inputs that used to lose data or give silently wrong results.

Each case must now end in one line on stderr and exit status 2 (or a :class:`DataError` /
:class:`CheckpointError` naming the file) with nothing on disk changed, or, for inputs that are
valid, in the right result: ``--overwrite`` never deletes what the command reads, a run folder
is written by one process at a time (and a killed one leaves no stuck lock), duplicate columns,
one-class training sets and bad labels are refused, ``1`` and ``1.0`` are one label, NaN weights
are refused and NaN numbers are written as ``null``, lines split on ``\\n`` only, and two outputs
never share a file.
"""

import argparse
import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import tiny_bert_classifier
from hypothesis import example, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from test_cli import data_dir, model_dir, sentences, snapshot, write_jsonl  # noqa: F401 (fixtures)
from test_cli_decoders import decoder_dir  # noqa: F401 (fixture)

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.cli import main
from pyro_monteclora.data.files import read_records
from pyro_monteclora.data.records import DataError, has_visible_text, load_classification_file
from pyro_monteclora.storage.checkpoint import CheckpointError, load_pretrained, save_pretrained


def tiny_train(model_dir, train_file, output, *extra):
    return [
        "train",
        "--model",
        str(model_dir),
        "--train-file",
        str(train_file),
        "--rank",
        "4",
        "--batch-size",
        "8",
        "--max-length",
        "16",
        "--epochs",
        "1",
        "--no-validation",
        "--output",
        str(output),
        *extra,
    ]


def refused(capsys, argv, pattern=None):
    """Run ``argv``; it must exit 2 with one line on stderr (matching ``pattern``)."""
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert err.startswith("pyro-monteclora") and "\n" not in err, err
    if pattern is not None:
        assert __import__("re").search(pattern, err), err
    return err


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


@pytest.fixture(scope="module")
def run(model_dir, data_dir, tmp_path_factory):  # noqa: F811
    output = tmp_path_factory.mktemp("runs") / "run"
    assert main(tiny_train(model_dir, data_dir / "train.jsonl", output)) == 0
    return output


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


# -- 3. duplicate columns --------------------------------------------------------------------------

DUPLICATES = [  # (file name, content, where)
    ("dup.csv", "text,text,label\na film,good,1\nb,c,0\n", r"dup\.csv line 1: the column 'text' appears twice"),
    ("dup.tsv", "text\tlabel\tlabel\na\t1\t0\n", r"dup\.tsv line 1: the column 'label' appears twice"),
    (
        "dup.jsonl",
        '{"text": "a", "label": 1}\n{"text": "a", "text": "b", "label": 0}\n',
        r"dup\.jsonl line 2: the field 'text' appears twice",
    ),
    ("dup.json", '[{"text": "a", "label": 1, "label": 0}]', r"dup\.json: the field 'label' appears twice"),
]


@pytest.mark.parametrize("name, content, pattern", DUPLICATES, ids=[c[0] for c in DUPLICATES])
def test_duplicate_columns_are_refused_naming_the_file_and_the_column(tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_classification_file(path, ["text"], "label")


def test_duplicate_parquet_columns_are_refused_in_one_line(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    path = tmp_path / "dup.parquet"
    parquet.write_table(
        pyarrow.table(
            [pyarrow.array(["a"]), pyarrow.array(["b"]), pyarrow.array([1])], names=["text", "text", "label"]
        ),
        path,
    )
    with pytest.raises(DataError, match=r"dup\.parquet: the column 'text' appears twice") as raised:
        read_records(path)
    assert "\n" not in str(raised.value)


def test_train_refuses_a_csv_with_a_duplicate_column(model_dir, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "dup.csv"
    path.write_text("text,text,label\n" + "".join(f"{r['text']},x,{r['label']}\n" for r in sentences(8, 0)))
    refused(capsys, tiny_train(model_dir, path, tmp_path / "out"), r"the column 'text' appears twice")
    assert not (tmp_path / "out").exists()


# -- 4. a classifier needs two labels --------------------------------------------------------------


def test_a_one_class_training_set_is_refused(model_dir, data_dir, tmp_path, capsys):  # noqa: F811
    one_class = write_jsonl(tmp_path / "pos.jsonl", [r for r in sentences(16, 0) if r["label"] == "pos"])
    one_row = write_jsonl(tmp_path / "one.jsonl", sentences(1, 0))
    integers = write_jsonl(tmp_path / "ones.jsonl", [{"text": "a film", "label": 1}] * 4)
    out = tmp_path / "out"
    refused(
        capsys,
        tiny_train(model_dir, one_class, out),
        r"pos\.jsonl: a classifier needs at least two labels .*, but all its 8 rows have the label 'pos'",
    )
    refused(capsys, tiny_train(model_dir, one_row, out), r"one\.jsonl: .*, but its only row has the label")
    refused(capsys, tiny_train(model_dir, integers, out), r"ones\.jsonl: .* have the label '1'")
    refused(
        capsys,
        tiny_train(model_dir, data_dir / "train.jsonl", out, "--max-train-samples", "1"),
        r"train\.jsonl: .*its only row \(--max-train-samples 1\) has the label 'neg'",
    )
    refused(
        capsys,
        [
            "sweep",
            "--model",
            str(model_dir),
            "--train-file",
            str(one_class),
            "--methods",
            "lora",
            "--test-file",
            str(data_dir / "test.jsonl"),
            "--output",
            str(out),
        ],
        r"needs at least two labels",
    )
    assert not out.exists()


# -- 5. labels ---------------------------------------------------------------------------------------


def test_one_and_one_point_zero_are_one_label(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"text": "a", "label": 1},
            {"text": "b", "label": 1.0},
            {"text": "c", "label": "1"},
            {"text": "d", "label": 0},
        ],
    )
    data = load_classification_file(path, ["text"], "label")
    assert data.label_names == ["0", "1"] and data.labels == [1, 1, 1, 0]
    csv = tmp_path / "mixed.csv"
    csv.write_text("text,label\na,1\nb,1.0\nc, 0 \nd,2e0\n")
    data = load_classification_file(csv, ["text"], "label")
    assert data.label_names == ["0", "1", "2"] and data.labels == [1, 1, 0, 2]
    # against a given label set (a checkpoint's), too
    data = load_classification_file(path, ["text"], "label", label_names=["0", "1"])
    assert data.labels == [1, 1, 1, 0]


BAD_LABELS = [  # (jsonl lines, error pattern)
    (
        '{"text": "a", "label": 0}\n{"text": "b", "label": NaN}\n',
        r"row 2: label 'nan' in column 'label' is not a finite number",
    ),
    ('{"text": "a", "label": Infinity}\n', r"row 1: label 'inf' .* is not a finite number"),
    ('{"text": "a", "label": 0.5}\n', r"row 1: label '0.5' .* is a number with a fraction"),
    ('{"text": "a", "label": null}\n', r"row 1: no label in column 'label'"),
    ('{"text": "a"}\n', r"no column 'label'"),
    ('{"text": "a", "label": 0}\n{"text": "b"}\n', r"row 2: no label in column 'label'"),
    ('{"text": "a", "label": [1]}\n', r"row 1: label '\[1\]' .* is a list, not a number or a name"),
]


@pytest.mark.parametrize("content, pattern", BAD_LABELS, ids=[p[:20] for _, p in BAD_LABELS])
def test_a_missing_or_nan_label_is_an_error_naming_the_row(tmp_path, content, pattern):
    path = tmp_path / "labels.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=pattern) as raised:
        load_classification_file(path, ["text"], "label")
    assert str(path) in str(raised.value)


def test_strings_that_only_look_like_integers_are_names(tmp_path):
    from pyro_monteclora.data.records import label_key

    path = tmp_path / "odd.csv"
    path.write_text("text,label\na,--1\nb,\u00b2\nc,\u0661\nd,1\n")
    data = load_classification_file(path, ["text"], "label")
    assert data.label_names == ["--1", "1", "\u00b2", "\u0661"] and data.labels == [0, 2, 3, 1]
    assert [label_key(v) for v in ("--1", "\u00b2", " 7 ", "+3", "-0", 2.0)] == ["--1", "\u00b2", 7, 3, 0, 2]
    big = tmp_path / "big.csv"
    big.write_text("text,label\na," + "9" * 5000 + "\nb,0\n")
    with pytest.raises(DataError, match=r"big\.csv row 1: label .* is a number too large"):
        load_classification_file(big, ["text"], "label")


def test_task_labels_and_multiple_choice_answers_refuse_unicode_digits():
    from pyro_monteclora.data.multiple_choice import parse_answer
    from pyro_monteclora.data.tasks import get_task

    mrpc = get_task("mrpc")
    assert mrpc.normalise_label(1.0, "f.jsonl row 1") == mrpc.label_names[1]
    with pytest.raises(DataError, match=r"row 1: label '\u00b2'"):
        mrpc.normalise_label("\u00b2", "f.jsonl row 1")
    assert parse_answer(1.0, ["a", "b"], "q.jsonl line 1") == 1
    for value in ("\u00b2", "answer\u00b2", "9" * 5000):
        with pytest.raises(DataError, match=r"q\.jsonl line 1: answer"):
            parse_answer(value, ["a", "b"], "q.jsonl line 1")


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


# -- 7. lines end at \n or \r\n only -----------------------------------------------------------------

SEPARATORS = "\u2028\u2029\x0c\x0b\x85\x1c"


def test_a_jsonl_file_with_unicode_line_separators_inside_strings_is_read(tmp_path):
    path = tmp_path / "sep.jsonl"
    rows = [{"text": f"one{c}two", "label": i % 2} for i, c in enumerate(SEPARATORS)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")  # raw, not escaped
    data = load_classification_file(path, ["text"], "label")
    assert data.texts == [r["text"] for r in rows]


def test_predict_gives_one_prediction_per_input_line(run, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    lines = [f"a film{c}good" for c in SEPARATORS] + ["a film bad"]
    texts.write_text("\r\n".join(lines) + "\n", encoding="utf-8")
    assert main(["predict", "--checkpoint", str(run), "--input", str(texts), "--num-samples", "0"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.split("\n") if line]
    assert [row["text"] for row in out] == lines


def test_generate_reads_one_prompt_per_line(tmp_path):
    from pyro_monteclora.cli.generate import _read_prompts

    path = tmp_path / "prompts.txt"
    path.write_text("capital\u2028of peru ?\r\nwhat\x0cis it ?\n\n", encoding="utf-8")
    args = argparse.Namespace(prompt=None, prompt_file=str(path), prompt_column=None)
    assert _read_prompts(args).prompts == ["capital\u2028of peru ?", "what\x0cis it ?"]


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


# -- properties: a data file loads or raises a DataError naming it, nothing else ---------------------

LABELS = st.one_of(
    st.text(max_size=8),
    st.integers(-3, 12),
    st.floats(),
    st.booleans(),
    st.none(),
    st.sampled_from(["1", "1.0", " 2 ", "--1", "\u00b2", "\u0661", "nan", "1e0"]),
)
TEXTS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(LABELS, min_size=1, max_size=6))
@example(["\u00b2", "--1", 1])
@example([1, 1.0, "1", 0])
@example([0, float("nan")])
@example([" a", "a", "b"])  # a name label is stripped: one class
def test_any_labels_load_or_raise_a_data_error_naming_the_file(labels):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.jsonl"
        path.write_text("".join(json.dumps({"text": "a film", "label": v}) + "\n" for v in labels))
        try:
            data = load_classification_file(path, ["text"], "label")
        except DataError as error:
            assert str(path) in str(error) and "\n" not in str(error)
            return
    from pyro_monteclora.data.records import label_key

    # a name label is its text without surrounding spaces (records_to_classification strips it)
    keys = [label_key(v.strip() if isinstance(v, str) else v) for v in labels]
    for i, j in itertools.combinations(range(len(labels)), 2):  # equal keys, one class
        assert (data.labels[i] == data.labels[j]) == (keys[i] == keys[j] or str(keys[i]) == str(keys[j]))
    assert all(not (isinstance(v, float) and not math.isfinite(v)) for v in labels)


@settings(max_examples=150, deadline=None)
@given(st.lists(TEXTS, min_size=1, max_size=4))
@example(["one\u2028two", "form\x0cfeed", "next\x85line"])
def test_any_text_in_a_jsonl_file_reads_back_as_written(texts):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "texts.jsonl"
        path.write_text(
            "".join(json.dumps({"text": t, "label": i % 2}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
            encoding="utf-8",
        )
        try:
            data = load_classification_file(path, ["text"], "label")
        except DataError as error:
            # empty: nothing but white space, control or format characters (has_visible_text)
            assert str(path) in str(error) and any(not has_visible_text(t) for t in texts)
            return
    assert data.texts == [t.strip() for t in texts]
