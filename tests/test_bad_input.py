"""A table of bad inputs to the Python API: config, data files and checkpoints.

Each must fail with a clear error (the type, and a message naming the thing at fault) before any
work, and leave what was on disk untouched. The command line's table
(:func:`test_cli.bad_inputs`) must exit with status 2 and one line on stderr, and write nothing.
"""

import json
import pickle
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert_classifier, tiny_llama
from test_cli import bad_inputs, data_dir, model_dir, snapshot  # noqa: F401 (fixtures)

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.cli import main
from pyro_monteclora.data.records import DataError, load_classification_file
from pyro_monteclora.storage.checkpoint import CheckpointError, load_pretrained, save_pretrained

CONFIG_CASES = [  # (fields, error pattern)
    ({"rank": 0}, r"rank must be an integer >= 1, got 0"),
    ({"num_components": 0}, r"num_components must be an integer >= 1"),
    ({"rank": 4, "wishart_df": 2.5}, r"wishart_df must be a finite number > rank - 1 = 3"),
    ({"sample_scaler": -1e-3}, r"sample_scaler must be a finite number >= 0"),
    ({"sample_scaler": float("nan")}, r"sample_scaler must be a finite number >= 0"),
    ({"kl_weight": float("inf")}, r"kl_weight must be a finite number >= 0"),
    ({"dropout": 1.0}, r"dropout must be a number in \[0, 1\)"),
    ({"alpha": 0}, r"alpha must be a finite number > 0"),
    ({"bias": "lora_only"}, r"bias must be one of 'none', 'all'"),
    ({"target_modules": "("}, r"target_modules must be a list of module names or a valid regular"),
    ({"target_modules": []}, r"target_modules must be a non-empty list"),
    ({"random_B": "yes"}, r"random_B must be True or False"),
]


@pytest.mark.parametrize("fields, pattern", CONFIG_CASES, ids=[str(c[0]) for c in CONFIG_CASES])
def test_bad_config_fields(fields, pattern):
    with pytest.raises(ValueError, match=pattern):
        MonteCLoRAConfig(**fields)


def test_unknown_config_field_and_targets_that_match_nothing():
    with pytest.raises(ValueError, match=r"unknown fields \['ranks'\]"):
        MonteCLoRAConfig.from_dict({"ranks": 4})
    with pytest.raises(ValueError, match=r"matches no linear layer.*named \[.*'query'"):
        MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match=r"modules_to_save=\['head'\] matches no module"):
        MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(modules_to_save=["head"]))


def _write(path: Path, content) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


DATA_CASES = [  # (file name, content, error pattern)
    ("empty.jsonl", "", r"has no rows"),
    ("latin1.csv", "text,label\ncaf\xe9,1\n".encode("latin-1"), r"is not UTF-8 text \(invalid byte at line 2\)"),
    ("broken.jsonl", '{"text": "a", "label": 1}\n{"text": \n', r"line 2 is not valid JSON"),
    ("array.json", "[1, 2]", r"expected a list of objects"),
    ("ragged.json", '{"text": ["a", "b"], "label": [1]}', r"columns have different lengths"),
    ("nolabel.csv", "text,gold\na,1\n", r"no column 'label'; its columns are \['text', 'gold'\]"),
    ("blank.csv", "text,label\na,1\n  ,0\n", r"row 2: the text in column 'text' is empty"),
    ("missing.jsonl", '{"text": "a", "label": 1}\n{"label": 0}\n', r"row 2: the text .* \(missing\)"),
    ("negative.csv", "text,label\na,-1\nb,0\n", r"integer labels must be >= 0"),
    ("idcolumn.csv", "text,label\na,123456789\n", r"more than 10000 classes"),
    ("table.xlsx", "x", r"unsupported file type '.xlsx'"),
    ("duplicate.csv", "text,text,label\na,b,1\n", r"line 1: the column 'text' appears twice"),
    ("duplicate.jsonl", '{"text": "a", "label": 1, "label": 0}\n', r"line 1: the field 'label' appears twice"),
    (
        "nan-label.jsonl",
        '{"text": "a", "label": 0}\n{"text": "b", "label": NaN}\n',
        r"row 2: label 'nan' in column 'label' is not a finite number",
    ),
    ("fraction.csv", "text,label\na,0.5\n", r"row 1: label '0.5' in column 'label' is a number with a fraction"),
]


@pytest.mark.parametrize("name, content, pattern", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data_files(tmp_path, name, content, pattern):
    path = _write(tmp_path / name, content)
    before = path.read_bytes()
    with pytest.raises(DataError, match=pattern) as raised:
        load_classification_file(path, ["text"], "label")
    assert str(path) in str(raised.value)  # the message names the file
    assert path.read_bytes() == before


def test_labels_outside_the_label_set_and_a_missing_file(tmp_path):
    path = _write(tmp_path / "test.jsonl", '{"text": "a", "label": "maybe"}\n')
    with pytest.raises(DataError, match=r"row 1: label 'maybe' .* outside the label set \['neg', 'pos'\]"):
        load_classification_file(path, ["text"], "label", label_names=["neg", "pos"])
    with pytest.raises(DataError, match=r"nope.csv: no such file"):
        load_classification_file(tmp_path / "nope.csv", ["text"], "label")


@pytest.fixture
def saved(tmp_path):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, modules_to_save=["classifier"]))
    folder = tmp_path / "saved"
    save_pretrained(model, folder, guide=MonteCLoRAGuide(model))
    return folder


def _snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


CHECKPOINT_CASES = [  # (what is done to the checkpoint, the base model, error pattern)
    ("nothing", lambda f: None, lambda: tiny_bert_classifier(seed=1), r"made for base model"),
    ("nothing", lambda f: None, tiny_llama, r"made for a BertForSequenceClassification"),
    (
        "truncate",
        lambda f: _write(f / "model.safetensors", (f / "model.safetensors").read_bytes()[:100]),
        tiny_bert_classifier,
        r"not a valid safetensors file",
    ),
    (
        "pickle",
        lambda f: _write(f / "model.safetensors", pickle.dumps({"x": 1})),
        tiny_bert_classifier,
        r"not a valid safetensors file",
    ),
    (
        "no config",
        lambda f: (f / "monteclora_config.json").unlink(),
        tiny_bert_classifier,
        r"not a saved pyro_monteclora model",
    ),
    (
        "other format",
        lambda f: _write(f / "monteclora_config.json", json.dumps({"format": "x"})),
        tiny_bert_classifier,
        r"format is not 'pyro-monteclora'",
    ),
    (
        "future version",
        lambda f: _write(
            f / "monteclora_config.json",
            json.dumps({**json.loads((f / "monteclora_config.json").read_text()), "format_version": 99}),
        ),
        tiny_bert_classifier,
        r"format_version 99",
    ),
    (
        "listed tensors differ",
        lambda f: _write(
            f / "monteclora_config.json",
            json.dumps({**json.loads((f / "monteclora_config.json").read_text()), "tensors": {}}),
        ),
        tiny_bert_classifier,
        r"does not hold the tensors",
    ),
]


@pytest.mark.parametrize(
    "change, damage, base, pattern", CHECKPOINT_CASES, ids=[f"{c[0]}-{c[3][:20]}" for c in CHECKPOINT_CASES]
)
def test_bad_checkpoints(saved, monkeypatch, change, damage, base, pattern):
    damage(saved)
    before = _snapshot(saved)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never run"))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle.loads must never run"))
    with pytest.raises(CheckpointError, match=pattern):
        load_pretrained(saved, base_model=base())
    assert _snapshot(saved) == before


def test_an_output_folder_that_cannot_be_made(tmp_path):
    blocker = _write(tmp_path / "a-file", "keep me")
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4))
    with pytest.raises(CheckpointError, match=r"a-file exists and is not a folder"):
        save_pretrained(model, blocker)
    with pytest.raises(NotADirectoryError, match=r"a-file"):
        save_pretrained(model, blocker / "inner")
    assert blocker.read_text() == "keep me"


def test_bad_input_exits_2_with_one_line_and_writes_nothing(model_dir, data_dir, tmp_path, capsys):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("precious")
    cases = bad_inputs(model_dir, data_dir, tmp_path)
    before = snapshot(tmp_path)
    for name, argv in cases:
        status = main(argv)
        err = capsys.readouterr().err.strip()
        assert status == 2, (name, err)
        assert err.startswith("pyro-monteclora") and "\n" not in err, (name, err)
        assert snapshot(tmp_path) == before, name
    assert not (tmp_path / "out").exists()


def test_paths_inside_a_checkpoint_never_become_places_to_write(model_dir, data_dir, tmp_path):
    """A checkpoint whose JSON points its model and data elsewhere: the run reads what it names,
    and writes only into --output."""
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                str(model_dir),
                "--train-file",
                str(data_dir / "train.jsonl"),
                "--test-file",
                str(data_dir / "test.jsonl"),
                "--epochs",
                "1",
                "--max-length",
                "16",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    config_path = run / "checkpoint" / "monteclora_config.json"
    record = json.loads(config_path.read_text())
    record["metadata"]["data"]["files"]["test"] = str(tmp_path / ".." / "elsewhere" / "test.jsonl")
    record["metadata"]["model_path"] = str(tmp_path / "evil-model")
    config_path.write_text(json.dumps(record))
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    assert main(["evaluate", "--checkpoint", str(run), "--output", str(out)]) == 2  # no such data
    assert (
        main(["evaluate", "--checkpoint", str(run), "--output", str(out), "--test-file", str(data_dir / "test.jsonl")])
        == 2
    )  # no such model folder
    assert snapshot(tmp_path) == before
    assert not (tmp_path.parent / "elsewhere").exists() and not (tmp_path / "evil-model").exists()


def test_remote_code_is_off_unless_asked_for():
    import inspect

    from pyro_monteclora.cli import build_parser

    parser = build_parser()
    for command in ("train", "evaluate", "predict"):
        args = parser.parse_args([command, "--output", "x"] if command == "train" else [command, "--checkpoint", "x"])
        assert args.trust_remote_code is False, command
    assert inspect.signature(load_pretrained).parameters["trust_remote_code"].default is False
