"""The data layer on ``datasets``: files become memory-mapped Arrow tables, tokens are cached
beside them, and the loader's batches are exactly what the tokenizer pads."""

import csv
import json
import os

import datasets
import pytest
import torch
from transformers import AutoTokenizer

from pyro_monteclora.data.classification import (
    TextClassificationData,
    classification_loader,
    default_encoder_path,
    tokenizer_fingerprint,
)
from pyro_monteclora.data.files import load_file_table, read_located_records
from pyro_monteclora.data.hf_datasets import from_hf_dataset
from pyro_monteclora.data.records import DataError, load_classification_file, records_to_classification

WORDS = "the film is a quiet triumph of mood over plot and a dull slog at once".split()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(default_encoder_path())


def _write_csv(path, count, pairs=False):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sentence", "other", "gold"] if pairs else ["sentence", "gold"])
        for i in range(count):
            text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(3 + i % 11))
            label = ["neg", "pos", "mixed"][i % 3]
            writer.writerow([text, f"row {i}, said {WORDS[i % len(WORDS)]}", label] if pairs else [text, label])
    return path


def test_a_file_is_a_memory_mapped_table_and_its_tokens_are_cached_beside_it(tmp_path, tokenizer):
    path = _write_csv(tmp_path / "train.csv", 500)
    data = load_classification_file(path, ["sentence"], "gold")
    assert len(data) == 500 and data.label_names == ["mixed", "neg", "pos"]
    assert isinstance(data.table.data, datasets.table.MemoryMappedTable)  # read from disk, not lists
    assert data.table.cache_files  # the validated table is itself a cache file
    assert data.present_labels() == [0, 1, 2]
    first = data.tokenized(tokenizer, 16)
    assert isinstance(first.data, datasets.table.MemoryMappedTable)
    assert first.features["input_ids"].feature.dtype == "int32"
    assert first.features["attention_mask"].feature.dtype == "int8"
    cache = {entry["filename"] for entry in first.cache_files}
    stamps = {name: os.stat(name).st_mtime_ns for name in cache}

    # a second read of the unchanged file (as a second run would) finds the tokens in the cache,
    # although the tokenizer's truncation state changed when it was called
    tokenizer(["warm up"], truncation=True, max_length=4)
    again = load_classification_file(path, ["sentence"], "gold").tokenized(tokenizer, 16)
    assert {entry["filename"] for entry in again.cache_files} == cache
    assert {name: os.stat(name).st_mtime_ns for name in cache} == stamps
    assert again["input_ids"][:5] == first["input_ids"][:5]
    # a different max_length is a different cache entry
    shorter = data.tokenized(tokenizer, 8)
    assert {entry["filename"] for entry in shorter.cache_files} != cache
    assert max(len(ids) for ids in shorter["input_ids"]) <= 8


def test_the_tokenizer_fingerprint_ignores_call_state_but_not_vocabulary(tokenizer):
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["a b c d e f"], ["g"], truncation=True, max_length=5, padding="max_length")
    assert tokenizer_fingerprint(tokenizer) == before
    changed = AutoTokenizer.from_pretrained(default_encoder_path())
    changed.add_tokens(["monteclora"])
    assert tokenizer_fingerprint(changed) != before
    left = AutoTokenizer.from_pretrained(default_encoder_path(), padding_side="left")
    assert tokenizer_fingerprint(left) != before


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("pairs", [False, True])
def test_loader_batches_are_exactly_what_the_tokenizer_pads(tmp_path, side, pairs):
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path(), padding_side=side)
    path = _write_csv(tmp_path / "train.csv", 37, pairs=pairs)
    data = load_classification_file(path, ["sentence", "other"] if pairs else ["sentence"], "gold")
    loader = classification_loader(data, tokenizer, batch_size=8, max_length=12, shuffle=True, seed=3)
    seen = []
    for batch in loader:
        index = batch["example_index"].tolist()
        seen += index
        texts = [data.texts[i] for i in index]
        second = [data.text_pairs[i] for i in index] if pairs else None
        expected = tokenizer(texts, second, padding=True, truncation=True, max_length=12, return_tensors="pt")
        assert set(batch) == set(expected) | {"labels", "example_index"}
        for key in expected:
            assert batch[key].dtype == torch.long and torch.equal(batch[key], expected[key]), key
        assert batch["labels"].tolist() == [data.labels[i] for i in index]
    assert sorted(seen) == list(range(37)) and seen != list(range(37))  # every row once, shuffled


def test_csv_cells_are_read_as_written_and_json_keeps_its_types(tmp_path):
    path = tmp_path / "cells.csv"
    path.write_text("text,label,id\nNA,1,007\nnull,1.0,\n 2 ,0,x\n", encoding="utf-8")
    rows = load_file_table(path).to_list()
    assert rows == [
        {"text": "NA", "label": "1", "id": "007"},
        {"text": "null", "label": "1.0", "id": ""},
        {"text": " 2 ", "label": "0", "id": "x"},
    ]
    data = load_classification_file(path, ["text"], "label")
    assert data.texts == ["NA", "null", "2"] and data.labels == [1, 1, 0] and data.label_names == ["0", "1"]

    mixed = tmp_path / "mixed.jsonl"  # one label written three ways, and a name
    mixed.write_text(
        "\n".join(json.dumps({"text": t, "label": v}) for t, v in [("a", 1), ("b", "1"), ("c", 1.0), ("d", 0)]) + "\n"
    )
    assert load_classification_file(mixed, ["text"], "label").labels == [1, 1, 1, 0]
    columns = tmp_path / "columns.json"  # an object of columns, one of them mixed
    columns.write_text(json.dumps({"text": ["a", "b", "c"], "label": [1, "pos", None]}))
    assert [row for _, row in read_located_records(columns)] == [
        {"text": "a", "label": 1},
        {"text": "b", "label": "pos"},
        {"text": "c"},
    ]
    with pytest.raises(DataError, match=r"columns\.json row 3: no label in column 'label'"):
        load_classification_file(columns, ["text"], "label")


def test_places_name_the_line_of_each_row(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text('text,label\n"two\nlines",1\n\nlast,0\n', encoding="utf-8")
    assert [place for place, _ in read_located_records(path)] == ["line 3", "line 5"]
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b\\u2028c"}\r\n', encoding="utf-8")
    assert read_located_records(path) == [("line 1", {"text": "a"}), ("line 3", {"text": "b\u2028c"})]


def test_a_subset_is_a_view_and_the_table_checks_what_it_wraps(tmp_path):
    data = load_classification_file(_write_csv(tmp_path / "train.csv", 100), ["sentence"], "gold")
    head = data.subset(10)
    assert len(head) == 10 and head.texts == data.texts[:10] and head.label_names == data.label_names
    assert head.table.cache_files == data.table.cache_files  # no copy of the rows
    assert len(data.subset(1000)) == 100
    assert data[3] == {"text": data.texts[3], "label": data.labels[3], "index": 3}
    with pytest.raises(ValueError, match="no column 'label'"):
        TextClassificationData.from_table(datasets.Dataset.from_dict({"text": ["a"]}), ["0"])
    with pytest.raises(ValueError, match="label 5 is outside the label set 0..1"):
        TextClassificationData.from_table(datasets.Dataset.from_dict({"text": ["a"], "label": [5]}), ["a", "b"])


def test_rows_tables_and_data_sets_validate_alike():
    rows = [{"t": "fine", "y": "pos"}, {"t": "  ", "y": "neg"}, {"t": "dull", "y": None}]
    table = datasets.Dataset.from_list(rows)
    messages = []
    for read in (
        lambda: records_to_classification(rows, "src", ["t"], "y"),
        lambda: from_hf_dataset(table, "t", "y"),
    ):
        with pytest.raises(DataError) as raised:
            read()
        messages.append(str(raised.value).split(": ", 1)[1])
    # the text error comes first, as it did when all texts were read before the labels
    assert messages == ["the text in column 't' is empty or not a string ('  ')"] * 2


def test_a_multi_batch_table_reports_the_first_bad_row_of_a_later_batch(tmp_path, monkeypatch):
    import pyro_monteclora.data.records as records

    monkeypatch.setattr(records, "BATCH_ROWS", 7)
    rows = [{"text": f"t{i}", "label": i % 2} for i in range(30)]
    rows[22]["label"] = 0.5
    with pytest.raises(DataError, match=r"row 23: label '0.5' in column 'label' is a number with a fraction"):
        from_hf_dataset(datasets.Dataset.from_list(rows[:21] + [{"text": "x", "label": 1}] + rows[22:]))
    rows[22]["label"] = "maybe"
    with pytest.raises(DataError, match=r"row 23: label 'maybe' .* outside the label set \['0', '1'\]"):
        from_hf_dataset(
            datasets.Dataset.from_list([dict(r, label=str(r["label"])) for r in rows]), label_names=["0", "1"]
        )
    data = from_hf_dataset(datasets.Dataset.from_list([dict(r, label=i % 2) for i, r in enumerate(rows)]))
    assert data.labels == [i % 2 for i in range(30)] and data.texts[22] == "t22"


@pytest.mark.parametrize("name, content", [("header.csv", "text,label\n"), ("header.tsv", "text\tlabel\n\n")])
def test_a_header_without_rows_has_no_rows(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"{name} has no rows"):
        load_classification_file(path, ["text"], "label")


def test_a_cache_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    """datasets writes its Arrow table into its cache first; when it cannot (a read-only home, as
    root cannot reproduce here), the one line says which setting moves the cache."""
    path = _write_csv(tmp_path / "train.csv", 5)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/home/user/.cache/huggingface/datasets")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    with pytest.raises(DataError, match=r"train\.csv cannot be read \(.*Permission denied.*HF_DATASETS_CACHE"):
        load_file_table(path)
