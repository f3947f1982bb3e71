"""A user's own datasets.Dataset / DatasetDict: validated as files are, schema errors before any row."""

import datasets
import pytest

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
