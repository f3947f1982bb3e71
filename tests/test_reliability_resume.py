"""Bad input that used to end in a traceback (issue 21, items 9-14 and the doubtful list): seeds past
2**32, a rank wider than its layers, symbolic links to nowhere as outputs, damaged run records,
training states and checkpoint configs, deeply nested JSON, a pickle named model.safetensors, a
disk that fills up while a checkpoint is written. Each is one line on stderr (exit 2; exit 1 for the
failed write), and nothing already on disk changes."""

import errno
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert_classifier
from safetensors.torch import load_file, save_file
from test_cli import data_dir, model_dir, train_args  # noqa: F401 (fixtures)

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.cli import main
from pyro_monteclora.data.records import DataError, load_classification_file, records_to_classification
from pyro_monteclora.storage.checkpoint import CheckpointError, load_pretrained, save_pretrained

NESTED = "[" * 100_000 + "]" * 100_000  # past Python's recursion limit


def files(folder: Path) -> dict:
    """Every entry under ``folder`` (links not followed): its kind, and a regular file's bytes and
    modification time."""
    found = {}
    for root, dirs, names in os.walk(folder):
        for name in dirs + names:
            path = Path(root) / name
            info = os.lstat(path)
            found[str(path.relative_to(folder))] = (
                (info.st_mtime_ns, path.read_bytes())
                if path.is_file() and not path.is_symlink()
                else (info.st_mode, os.readlink(path) if path.is_symlink() else None)
            )
    return found


def one_line_exit(argv, capsys, status=2) -> str:
    """Run the command; it must exit with ``status`` and say one line on stderr, which is returned."""
    result = main(argv)
    err = capsys.readouterr().err.strip()
    assert result == status, err
    assert err.startswith("pyro-monteclora") and "\n" not in err, err
    return err


@pytest.fixture(scope="module")
def run(model_dir, data_dir, tmp_path_factory):
    """A two-epoch run (its checkpoint at epoch 2), copied by the tests that damage it."""
    folder = tmp_path_factory.mktemp("run") / "run"
    assert main(train_args(model_dir, data_dir, folder, "--epochs", "2", "--no-validation")) == 0
    return folder


@pytest.fixture
def run_copy(run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy


def edit_json(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def nested(name: str):
    """Replace the run's ``name`` by JSON nested past Python's recursion limit."""
    return lambda folder: (folder / name).write_text(NESTED)


# -- 9. seeds: [0, 2**32 - 1], refused before any model loads or folder is made ---------------------


def test_seeds_outside_32_bits_are_refused_up_front(model_dir, data_dir, run, tmp_path, capsys):
    before = files(tmp_path)
    for seed in (str(2**32), "1" + "0" * 400):
        err = one_line_exit(train_args(model_dir, data_dir, tmp_path / "out", "--seed", seed), capsys)
        assert "--seed must be an integer >= 0 and <= 4294967295, got" in err
    err = one_line_exit(
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
            "--seeds",
            f"0,{2**32}",
            "--output",
            str(tmp_path / "sweep"),
        ],
        capsys,
    )
    assert f"--seeds must be an integer >= 0 and <= 4294967295, got {2**32}" in err
    for command in (
        ["evaluate", "--checkpoint", str(run), "--output", str(tmp_path / "eval")],
        ["predict", "--checkpoint", str(run), "--input", str(data_dir / "test.jsonl")],
    ):
        err = one_line_exit(command + ["--seed", str(2**32)], capsys)
        assert "--seed must be an integer >= 0 and <= 4294967295" in err
    assert files(tmp_path) == before


# -- 10. a rank wider than the adapted layers ----------------------------------------------------------


def test_a_rank_wider_than_the_layers_is_refused_before_anything_is_written(model_dir, data_dir, tmp_path, capsys):
    before = files(tmp_path)
    err = one_line_exit(train_args(model_dir, data_dir, tmp_path / "out", "--rank", "33"), capsys)
    assert "--rank must be at most 32, the smaller side of the adapted layer bert.encoder.layer.0" in err
    err = one_line_exit(
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
            "--rank",
            "100000",
            "--output",
            str(tmp_path / "sweep"),
        ],
        capsys,
    )
    assert "--rank must be at most 32" in err
    assert files(tmp_path) == before


# -- 11. outputs: symbolic links to nowhere, devices, another run's checkpoint/ ------------------------


def test_outputs_that_are_links_to_nowhere_devices_or_inside_a_checkpoint(model_dir, data_dir, run, tmp_path, capsys):
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    os.mkfifo(tmp_path / "fifo")
    run_before = files(run)
    before = files(tmp_path)
    texts = str(data_dir / "test.jsonl")
    for name in ("dangling", "loop", "loop/inner"):
        target = str(tmp_path / name)
        for argv in (
            train_args(model_dir, data_dir, target),
            [
                "sweep",
                "--model",
                str(model_dir),
                "--train-file",
                str(data_dir / "train.jsonl"),
                "--test-file",
                texts,
                "--methods",
                "lora",
                "--output",
                target,
            ],
            ["evaluate", "--checkpoint", str(run), "--output", target],
            ["predict", "--checkpoint", str(run), "--input", texts, "--output", target],
            ["generate", "--model", str(model_dir), "--prompt", "hi", "--output", target],
        ):
            err = one_line_exit(argv, capsys)
            assert "is a symbolic link to nowhere (dangling, or a loop)" in err, (argv[0], err)
    for argv in (
        ["predict", "--checkpoint", str(run), "--input", texts, "--output", str(tmp_path / "fifo")],
        ["predict", "--checkpoint", str(run), "--input", texts, "--output", str(tmp_path / "fifo"), "--overwrite"],
        ["generate", "--model", str(model_dir), "--prompt", "hi", "--metrics", str(tmp_path / "fifo")],
    ):
        err = one_line_exit(argv, capsys)
        assert "is not a regular file or folder (a device, pipe or socket); give a file name, or - " in err
    for argv in (
        train_args(model_dir, data_dir, run / "checkpoint" / "inner"),
        ["evaluate", "--checkpoint", str(run), "--output", str(run / "checkpoint" / "eval")],
        ["predict", "--checkpoint", str(run), "--input", texts, "--output", str(run / "checkpoint" / "p.jsonl")],
    ):
        err = one_line_exit(argv, capsys)
        assert f"lies inside the run {run}'s checkpoint/" in err
    assert files(tmp_path) == before and files(run) == run_before


# -- 12. --resume of a damaged run.json or training_state.json -----------------------------------------


def _arguments(**changes):
    return lambda record: record["arguments"].update(changes)


RUN_CASES = [  # (what is done to run.json, the message)
    (_arguments(batch_size=0), r"run.json: arguments.batch_size must be an integer >= 1, got 0"),
    (_arguments(learning_rate=float("nan")), r"arguments.learning_rate must be a finite number > 0, got nan"),
    (_arguments(epochs=1), r"arguments.epochs is 1, fewer than the 2 epoch\(s\) .*training_state.json has"),
    (_arguments(seed=2**32), r"arguments.seed must be an integer >= 0 and <= 4294967295"),
    (_arguments(batch_size=8.0), r"arguments.batch_size must be an integer >= 1, got 8.0"),
    (_arguments(no_validation="yes"), r"arguments.no_validation must be true or false, got 'yes'"),
    (_arguments(method="bayes"), r"arguments.method must be one of 'monteclora', 'lora', 'full'"),
    (lambda r: r["arguments"].pop("seed"), r"arguments.seed is missing"),
    (_arguments(rank=0), r"run.json: --rank must be an integer >= 1, got 0"),
    (lambda r: r.update(arguments=None), r"run.json: arguments must be an object, got None"),
    (lambda r: r.update(model_path=5), r"run.json: model_path must be a string, got 5"),
    (lambda r: r.update(processes=0), r"run.json: processes must be an integer >= 1, got 0"),
    (lambda r: r["data"].update(source="ftp"), r"run.json: data.source must be one of 'task', 'files'"),
    (lambda r: r["data"].update(files=None), r"run.json: data.files must be an object, got None"),
    (lambda r: r["data"]["files"].update(train=3), r"data.files.train must be a string, got 3"),
    (lambda r: r["data"].update(text_columns="text"), r"data.text_columns must be a non-empty list of str"),
    (None, r"run.json is not a readable run record \(nested too deeply"),
]


@pytest.mark.parametrize("damage, pattern", RUN_CASES, ids=[c[1][:40] for c in RUN_CASES])
def test_resume_of_a_damaged_run_record(run_copy, capsys, damage, pattern):
    if damage is None:
        nested("run.json")(run_copy)
    else:
        edit_json(run_copy / "run.json", damage)
    before = files(run_copy)
    err = one_line_exit(["train", "--output", str(run_copy), "--resume"], capsys)
    assert re.search(pattern, err), err
    assert files(run_copy) == before


def _state(change):
    return lambda folder: edit_json(folder / "checkpoint" / "training_state.json", change)


def _state_tensors(change):
    def damage(folder):
        path = folder / "checkpoint" / "training_state.safetensors"
        tensors = load_file(str(path))
        change(tensors)
        save_file(tensors, str(path))

    return damage


def _first_group(**changes):
    return _state(lambda r: r["optimizer"]["param_groups"][0].update(changes))


def _drop_last_parameter(record):
    index = record["optimizer"]["param_groups"][0]["params"].pop()
    record["optimizer"]["state"].pop(str(index), None)


STATE_CASES = [  # (what is done to the checkpoint's training state, the message)
    (_state(lambda r: r.pop("step")), r"training_state.json: step is missing"),
    (_state(lambda r: r.update(epoch="2")), r"training_state.json: epoch must be an integer >= 0, got '2'"),
    (_state(lambda r: r.update(history=None)), r"history must be an object, got None"),
    (_state(lambda r: r["history"].update(epochs=[1])), r"history.epochs\[0\] must be an object, got 1"),
    (_state(lambda r: r["rng"]["random"][1].pop()), r"rng.random is not a Python random state"),
    (_state(lambda r: r["rng"]["random"].pop()), r"rng.random is not a Python random state"),
    (_state(lambda r: r["rng"]["numpy"][1].pop()), r"rng.numpy is not a NumPy random state"),
    (_state(lambda r: r["rng"]["numpy"].__setitem__(2, -5)), r"rng.numpy is not a NumPy random state"),
    (_state(lambda r: r.update(rng=None)), r"rng must be an object, got None"),
    (
        _state_tensors(lambda t: t.update({"rng.torch": t["rng.torch"][:100].clone()})),
        r"rng.torch .* is not a torch random",
    ),
    (_state_tensors(lambda t: t.pop("rng.torch")), r"the tensor rng.torch is missing"),
    (_first_group(lr="fast"), r"optimizer.param_groups\[0\].lr must be a finite number >= 0, got 'fast'"),
    (_first_group(betas=[0.9]), r"optimizer.param_groups\[0\].betas must be a list of two numbers"),
    (_state(lambda r: r["optimizer"].update(param_groups=[])), r"optimizer.param_groups is empty"),
    (
        _state(_drop_last_parameter),
        r"optimizer.param_groups list \d+ parameter\(s\); the model has \d+ trained tensors",
    ),
    (_state(lambda r: r["optimizer"]["state"].update({"999": {}})), r"optimizer.state.999: no parameter group"),
    (_state(lambda r: r["scheduler"].update(base_lrs=[])), r"scheduler.base_lrs has 0 entries for 1"),
    (_state(lambda r: r["scheduler"].update(last_epoch=None)), r"scheduler.last_epoch must be an integer"),
    (
        _state_tensors(
            lambda t: t.update({"optimizer.0.exp_avg": torch.zeros(3), "optimizer.0.exp_avg_sq": torch.zeros(3)})
        ),
        r"optimizer.state.0 has shape \(3,\); its parameter has",
    ),
    (_state_tensors(lambda t: t.pop("optimizer.0.exp_avg_sq")), r"optimizer.state.0: the tensor exp_avg_sq is missing"),
    (nested("checkpoint/training_state.json"), r"is not valid JSON: nested too deeply"),
    (
        lambda f: (f / "checkpoint" / "training_state.safetensors").write_bytes(pickle.dumps({"x": 1})),
        r"training_state.safetensors is not a valid safetensors file",
    ),
]


@pytest.mark.parametrize("damage, pattern", STATE_CASES, ids=[c[1][:40] for c in STATE_CASES])
def test_resume_of_a_damaged_training_state(run_copy, capsys, monkeypatch, damage, pattern):
    damage(run_copy)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads must never run"))
    before = files(run_copy)
    err = one_line_exit(["train", "--output", str(run_copy), "--resume"], capsys)
    assert re.search(pattern, err), err
    assert "checkpoint" in err  # the file is named
    assert files(run_copy) == before


def test_typed_and_recorded_arguments_share_one_table():
    from pyro_monteclora.cli.options import adapter_dests
    from pyro_monteclora.cli.runs import RUN_CHECKS, RUN_OPTIONS

    # every run option has one checker: its RUN_CHECKS row, or (the adapter options) the config
    assert set(RUN_CHECKS) | set(adapter_dests()) == set(RUN_OPTIONS)
    assert not set(RUN_CHECKS) & set(adapter_dests())


# -- 13. a damaged monteclora_config.json, blamed on the checkpoint ------------------------------------


def _config(change):
    return lambda folder: edit_json(folder / "checkpoint" / "monteclora_config.json", change)


CONFIG_CASES = [  # (what is done to the checkpoint, the message)
    (_config(lambda r: r.pop("likelihood")), r"monteclora_config.json: likelihood is missing"),
    (_config(lambda r: r.update(base_model=None)), r"monteclora_config.json: base_model must be an object, got None"),
    (_config(lambda r: r["base_model"].pop("architecture")), r"base_model.architecture is missing"),
    (_config(lambda r: r["base_model"].update(num_labels="2")), r"base_model.num_labels must be an integer >= 1"),
    (
        _config(lambda r: r["base_model"].update(num_labels=10**12)),
        r"base_model.num_labels is 1000000000000 but the saved classifier has 2 outputs",
    ),
    (
        _config(lambda r: r["base_model"].update(pad_token_id=10**9)),
        r"base_model.pad_token_id is 1000000000, outside the base model's 64-token vocabulary",
    ),
    (_config(lambda r: r.update(config=None)), r"monteclora_config.json: config must be an object, got None"),
    (_config(lambda r: r["config"].update(rank="4")), r"config: MonteCLoRAConfig.rank must be an integer"),
    (
        _config(lambda r: r["config"].update(rank=10**9, wishart_df=None)),
        r"config.rank is 1000000000 but tensors.network.*lora_A_mean has shape \[4, 32\]",
    ),
    (_config(lambda r: r.update(guide={"class": 5})), r"guide.class must be one of .*got 5"),
    (
        _config(lambda r: r.update(guide={"class": "MonteCLoRAGuide", "options": {"scale_tril": "banded"}})),
        r"guide.options: MonteCLoRAGuide.scale_tril must be one of",
    ),
    (_config(lambda r: r.update(tensors=[])), r"tensors must be an object, got \[\]"),
    (_config(lambda r: r.update(metadata=[])), r"metadata must be an object, got \[\]"),
    (_config(lambda r: r["metadata"].update(data=5)), r"metadata.data must be an object, got 5"),
    (_config(lambda r: r["metadata"]["data"].update(source=None)), r"metadata.data.source must be one of"),
    (_config(lambda r: r["metadata"].update(max_length="16")), r"metadata.max_length must be an integer >= 2"),
    (nested("checkpoint/monteclora_config.json"), r"monteclora_config.json is not valid JSON: nested too deep"),
    (
        lambda f: (f / "checkpoint" / "tokenizer_config.json").write_text("{"),
        r"--checkpoint .*checkpoint: its tokenizer: JSONDecodeError",
    ),
]


@pytest.mark.parametrize("damage, pattern", CONFIG_CASES, ids=[c[1][:40] for c in CONFIG_CASES])
def test_evaluate_a_damaged_checkpoint_names_the_file_and_the_field(run_copy, tmp_path, capsys, damage, pattern):
    damage(run_copy)
    before = files(tmp_path)
    err = one_line_exit(["evaluate", "--checkpoint", str(run_copy), "--output", str(tmp_path / "eval")], capsys)
    assert re.search(pattern, err), err
    assert "--model" not in err  # the checkpoint is at fault, not the base model
    assert files(tmp_path) == before


@pytest.fixture
def saved(tmp_path):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, modules_to_save=["classifier"]))
    MonteCLoRAGuide(model)
    return save_pretrained(model, tmp_path / "saved")


def test_integer_weights_in_a_checkpoint_are_refused_not_cast(saved):
    tensors = load_file(str(saved / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name].to(torch.int64)
    save_file(tensors, str(saved / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"model.safetensors: the tensor {name} is torch.int64, not floating"):
        load_pretrained(saved, base_model=tiny_bert_classifier())


# -- 14. nesting, a pickle named model.safetensors, a disk that fills up ------------------------------


@pytest.mark.parametrize(
    "name, content",
    [
        ("deep.json", NESTED),
        ("deep.jsonl", '{"text": "a", "label": ' + NESTED + "}\n"),
        ("digits.jsonl", '{"text": "a", "label": ' + "7" * 5000 + "}\n"),
    ],
)
def test_json_nested_past_the_recursion_limit_is_a_data_error(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=r"is not valid JSON") as raised:
        load_classification_file(path, ["text"], "label")
    assert str(path) in str(raised.value)


def test_sweep_resume_of_a_nested_or_non_object_sweep_json(model_dir, data_dir, tmp_path, capsys):
    folder = tmp_path / "sweep"
    folder.mkdir()
    for content in (NESTED, "[1, 2]"):
        (folder / "sweep.json").write_text(content)
        before = files(tmp_path)
        err = one_line_exit(
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
                str(folder),
                "--resume",
            ],
            capsys,
        )
        assert "sweep.json is not readable JSON" in err
        assert files(tmp_path) == before


def test_a_pickle_named_model_safetensors_in_the_base_folder(model_dir, data_dir, run, tmp_path, capsys, monkeypatch):
    base = tmp_path / "base"
    shutil.copytree(model_dir, base)
    (base / "model.safetensors").write_bytes(pickle.dumps({"weight": [1.0]}))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads must never run"))
    before = files(tmp_path)
    for argv in (
        train_args(base, data_dir, tmp_path / "out"),
        ["evaluate", "--checkpoint", str(run), "--model", str(base), "--output", str(tmp_path / "eval")],
    ):
        err = one_line_exit(argv, capsys)
        assert f"--model {base}: a .safetensors file there is not valid safetensors" in err
    assert files(tmp_path) == before


def test_a_checkpoint_write_that_runs_out_of_space(model_dir, data_dir, tmp_path, capsys, monkeypatch):
    """The second epoch's checkpoint cannot be written: exit 1 with one line, the first epoch's
    checkpoint intact and no temporary file left; --resume then finishes the run."""
    import pyro_monteclora.storage.checkpoint as serialization

    calls = []

    def full_disk(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            with open(filename, "wb") as handle:  # part of the file is written, then the disk is full
                handle.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return save_file(tensors, filename, metadata=metadata)

    run = tmp_path / "run"
    monkeypatch.setattr(serialization, "save_file", full_disk)
    assert main(train_args(model_dir, data_dir, run, "--epochs", "2", "--no-validation")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar: one line
    assert err.startswith("pyro-monteclora train: error: No space left on device: ") and "train --resume" in err
    assert json.loads((run / "checkpoint" / "training_state.json").read_text())["epoch"] == 1
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert not (run / "train_summary.json").exists()
    load_pretrained(run / "checkpoint")  # the first epoch's checkpoint is whole
    monkeypatch.undo()
    assert main(["train", "--output", str(run), "--resume"]) == 0
    assert json.loads((run / "checkpoint" / "training_state.json").read_text())["epoch"] == 2


def test_a_sweep_cell_whose_write_fails_is_retried_not_counted_as_diverged(tmp_path, monkeypatch, capsys):
    import pyro_monteclora.cli.train as train
    from pyro_monteclora.cli import CELL_CRASHED, run_cell

    def full_disk(args, defaults):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "x"))

    monkeypatch.setattr(train, "run_train", full_disk)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"train": ["train", "--output", str(tmp_path / "x")], "evaluate": None}))
    assert run_cell(str(plan)) == CELL_CRASHED
    assert capsys.readouterr().err.strip().count("\n") == 0


# -- the doubtful list -------------------------------------------------------------------------------


def _rows(*pairs):
    return [{"text": text, "label": label} for text, label in pairs]


def test_a_csv_row_with_more_fields_than_the_header_is_refused(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("text,label\na good film,pos\nfunny, sad,neg\n")
    with pytest.raises(DataError, match=r"train.csv line 3 has 3 fields, the header 2; quote a text"):
        load_classification_file(path, ["text"], "label")


def test_labels_lose_surrounding_spaces_and_labels_differing_in_case_are_refused():
    data = records_to_classification(_rows(("a", "pos"), ("b", " pos "), ("c", "neg")), "f", ["text"], "label")
    assert data.label_names == ["neg", "pos"] and data.labels == [1, 1, 0]
    with pytest.raises(DataError, match=r"f: the labels 'Pos' and 'pos' differ only in case"):
        records_to_classification(_rows(("a", "pos"), ("b", "Pos"), ("c", "neg")), "f", ["text"], "label")


def test_a_text_of_zero_width_characters_is_empty():
    with pytest.raises(DataError, match=r"f row 2: the text in column 'text' is empty"):
        records_to_classification(_rows(("a", "pos"), ("\u200b\u200d\ufeff\u2060", "neg")), "f", ["text"], "label")
    data = records_to_classification(_rows(("a", "pos"), ("\u200bb", "neg")), "f", ["text"], "label")
    assert data.texts == ["a", "\u200bb"]


def test_the_label_column_cannot_be_a_text_column():
    with pytest.raises(DataError, match=r"f: the label column 'text' is also a text column"):
        records_to_classification(_rows(("a", "pos"), ("b", "neg")), "f", ["text"], "text")


# -- any damage to a training state: refused, or usable as the run would use it -----------------------


def _reference_state(folder: Path) -> list:
    """Save a real AdamW + LambdaLR state after one step (over two tensors, one without a gradient
    and so without optimiser state) into ``folder``; returns the tensors' shapes."""
    from pyro_monteclora.training.state import TrainingState, capture_rng_state, save_training_state

    parameters = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    optimizer = torch.optim.AdamW(parameters, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    parameters[0].sum().backward()
    optimizer.step()
    scheduler.step()
    save_training_state(
        folder,
        TrainingState(
            epoch=1,
            step=1,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            rng=capture_rng_state(),
            history={"steps": [{"loss": 1.0}], "epochs": [{"epoch": 0, "loss": 1.0}], "train_seconds": 0.5},
        ),
    )
    return [tuple(p.shape) for p in parameters]


def _places(value, prefix=()):
    """Every place in a JSON value (a long list: its first and last item only)."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _places(item, prefix + (key,))
    elif isinstance(value, list):
        for index in [0, len(value) - 1] if len(value) > 8 else range(len(value)):
            yield from _places(value[index], prefix + (index,))


def test_any_damage_to_a_training_state_is_refused_or_usable(tmp_path):
    """Replace or delete any field of a saved training state with any JSON value: loading it either
    fails with a CheckpointError, or gives a state that the optimiser, the schedule and the random
    generators take and train on (what ``fit(resume=...)`` does with it)."""
    import random

    import numpy as np
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from test_properties import JSON_VALUES

    from pyro_monteclora.training.state import (
        STATE_JSON,
        STATE_TENSORS,
        capture_rng_state,
        check_state_fits,
        load_training_state,
        restore_rng_state,
    )

    reference = tmp_path / "reference"
    shapes = _reference_state(reference)
    original = json.loads((reference / STATE_JSON).read_text())
    places = [place for place in _places(original) if place]

    @settings(max_examples=150, deadline=None)
    @given(st.sampled_from(places), st.booleans(), JSON_VALUES)
    def damage(place, delete, value):
        record = json.loads(json.dumps(original))
        parent = record
        for key in place[:-1]:
            parent = parent[key]
        if delete and isinstance(parent, dict):
            del parent[place[-1]]
        else:
            parent[place[-1]] = value
        folder = tmp_path / "damaged"
        folder.mkdir(exist_ok=True)
        shutil.copy(reference / STATE_TENSORS, folder / STATE_TENSORS)
        (folder / STATE_JSON).write_text(json.dumps(record))
        try:
            state = load_training_state(folder)
            parameters = [torch.nn.Parameter(torch.zeros(shape)) for shape in shapes]
            check_state_fits(state, parameters, folder)
        except CheckpointError:
            return
        optimizer = torch.optim.AdamW(parameters, lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        optimizer.load_state_dict(state.optimizer)
        scheduler.load_state_dict(state.scheduler)
        saved = capture_rng_state()
        try:
            restore_rng_state(state.rng)
            torch.rand(1), random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn()
        finally:
            restore_rng_state(saved)
        sum(p.sum() for p in parameters).backward()
        optimizer.step()
        scheduler.step()
        assert isinstance(state.epoch, int) and isinstance(state.step, int)
        list(state.history.get("steps", [])), list(state.history.get("epochs", []))

    damage()


def test_any_damage_to_a_saved_config_is_refused_or_loads(saved, tmp_path):
    """Replace or delete any field of monteclora_config.json with any JSON value: loading fails with
    a CheckpointError, or gives a model (never a KeyError, TypeError, or a huge allocation)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from test_properties import JSON_VALUES

    original = json.loads((saved / "monteclora_config.json").read_text())
    places = [place for place in _places(original) if place and place[0] != "metadata"]

    @settings(max_examples=80, deadline=None)
    @given(st.sampled_from(places), st.booleans(), JSON_VALUES | st.integers(10**6, 10**12))
    def damage(place, delete, value):
        record = json.loads(json.dumps(original))
        parent = record
        for key in place[:-1]:
            parent = parent[key]
        if delete and isinstance(parent, dict):
            del parent[place[-1]]
        else:
            parent[place[-1]] = value
        folder = tmp_path / "damaged"
        folder.mkdir(exist_ok=True)
        shutil.copy(saved / "model.safetensors", folder / "model.safetensors")
        (folder / "monteclora_config.json").write_text(json.dumps(record))
        try:
            model, _ = load_pretrained(folder, base_model=tiny_bert_classifier())  # adapters go into it
        except CheckpointError:
            return
        assert model.num_trainable_parameters() > 0

    damage()
