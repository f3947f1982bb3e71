"""A user's own datasets.Dataset / DatasetDict: validated as files are, schema errors before any row."""

import json

import datasets
import pytest
from test_cli import model_dir  # noqa: F401  (the tiny BERT folder fixture)

from pyro_monteclora.data import DataError, from_hf_dataset


def dataset_dict():
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    train = datasets.Dataset.from_dict({"sentence": ["good film", "bad film", "fine"], "label": [1, 0, 1]}, features)
    return datasets.DatasetDict({"train": train, "validation": train.select([0, 1])})


def test_a_dataset_dict_split_becomes_labelled_text_with_its_class_names():
    data = from_hf_dataset(dataset_dict(), "sentence", "label", split="train")
    assert data.texts == ["good film", "bad film", "fine"]
    assert data.labels == [1, 0, 1]
    assert list(data.label_names) == ["neg", "pos"]


@pytest.mark.parametrize("names, labels", [(["neg", "pos"], [1, 0, 1]), (["pos", "neg"], [0, 1, 0])])
def test_class_label_names_may_be_given(names, labels):
    """A ClassLabel column's integers are its names: label_names (the same set, or reordered) map them."""
    data = from_hf_dataset(dataset_dict(), "sentence", "label", label_names=names, split="train")
    assert data.labels == labels and list(data.label_names) == names


def test_an_unlabelled_class_label_row_is_named_against_the_class_names():
    features = datasets.Features({"t": datasets.Value("string"), "l": datasets.ClassLabel(names=["neg", "pos"])})
    test = datasets.Dataset.from_dict({"t": ["a", "b"], "l": [0, -1]}, features)  # -1: GLUE's unlabelled test rows
    with pytest.raises(DataError, match=r"row 2: label -1 in column 'l' is outside the label set \['neg', 'pos'\]"):
        from_hf_dataset(test, "t", "l")


def test_string_labels_and_sentence_pairs():
    ds = datasets.Dataset.from_dict({"a": ["x", "y"], "b": ["p", "q"], "y": ["yes", "no"]})
    data = from_hf_dataset(ds, ["a", "b"], "y")
    assert data.text_pairs == ["p", "q"] and data.label_names == ["no", "yes"] and data.labels == [1, 0]


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: from_hf_dataset(dataset_dict(), "sentence", split="test"),
            r"no split 'test'; its splits are \['train', 'validation'\]",
        ),
        (lambda: from_hf_dataset(dataset_dict(), "sentence"), r"needs split=\.\.\.; its splits are"),
        (
            lambda: from_hf_dataset(dataset_dict(), "text", split="train"),
            r"no column 'text'; its columns are \['sentence', 'label'\]",
        ),
        (lambda: from_hf_dataset(dataset_dict(), "sentence", "labels", split="train"), r"no column 'labels'"),
        (lambda: from_hf_dataset([{"text": "a"}], "text"), r"expected a datasets.Dataset or DatasetDict, got list"),
        (lambda: from_hf_dataset(dataset_dict(), None, split="train"), r"text_columns must be a column name"),
        (
            lambda: from_hf_dataset(datasets.Dataset.from_dict({"text": ["ok", " "], "label": [0, 1]})),
            r"row 2: the text in column 'text' is empty",
        ),
        (
            lambda: from_hf_dataset(datasets.Dataset.from_dict({"text": ["ok", "no"], "label": [0.5, 1.0]})),
            r"row 1: label '0.5' in column 'label' is a number with a fraction",
        ),
    ],
)
def test_bad_input_names_what_is_missing_and_what_exists(call, message):
    with pytest.raises(DataError, match=message):
        call()


def test_the_command_line_trains_and_evaluates_a_saved_dataset_dict(model_dir, tmp_path, capsys):
    from test_cli import sentences

    from pyro_monteclora.cli import main

    rows = {"train": sentences(16, 0), "test": sentences(8, 1)}  # no validation split
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.Value("int64")})
    saved = datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"sentence": [r["text"] for r in part], "label": [int(r["label"] == "pos") for r in part]}, features
            )
            for split, part in rows.items()
        }
    )
    folder = tmp_path / "my_data"
    saved.save_to_disk(str(folder))
    run = tmp_path / "run"
    common = ["--model", str(model_dir), "--text-column", "sentence", "--max-length", "16"]
    assert main(["train", "--dataset", str(folder), *common, "--epochs", "1", "--output", str(run)]) == 0
    data = json.loads((run / "run.json").read_text())["data"]
    assert data["source"] == "dataset" and data["dataset"] == str(folder.resolve())
    assert main(["evaluate", "--checkpoint", str(run), "--num-samples", "0"]) == 0
    # a saved data set without a train split: one line naming the splits it has, nothing written
    saved.pop("train")
    other = tmp_path / "no_train"
    saved.save_to_disk(str(other))
    capsys.readouterr()
    status = main(["train", "--dataset", str(other), *common, "--output", str(tmp_path / "refused")])
    err = capsys.readouterr().err
    assert status == 2 and "no 'train' split; its splits are ['test']" in err, err
    assert not (tmp_path / "refused").exists()
