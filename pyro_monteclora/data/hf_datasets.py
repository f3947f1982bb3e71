"""Hugging Face data sets as labelled text: your own ``datasets.Dataset`` or ``DatasetDict``, a
folder written by ``save_to_disk``, or a data set on the hub.

:func:`from_hf_dataset` checks the split and the columns against the data set's schema before
reading a row, then validates the rows in Arrow batches as a file is validated
(:func:`~pyro_monteclora.data.records.table_to_classification`: empty texts, missing, NaN or
fractional labels, labels outside the label set, each named by row and column). A ``ClassLabel``
label column brings its own names, so ``label_names`` need not be given.

>>> import datasets
>>> ds = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["fine", "dull"], "label": [1, 0]})})
>>> data = from_hf_dataset(ds, "text", "label", split="train")
>>> data.texts, data.labels, data.label_names
(['fine', 'dull'], [1, 0], ['0', '1'])
>>> from_hf_dataset(ds, "sentence", split="train")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pyro_monteclora.data.errors.DataError: ... no column 'sentence'; its columns are ['text', 'label']
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Union

from pyro_monteclora.data.classification import TextClassificationData
from pyro_monteclora.data.errors import DataError
from pyro_monteclora.data.records import table_to_classification

__all__ = ["from_hf_dataset", "saved_dataset_folder", "load_hub_table", "hub_split_names"]


def _select_split(dataset, split: Optional[str]):
    """The ``datasets.Dataset`` to read: ``dataset`` itself, or its ``split`` if it is a ``DatasetDict``."""
    import datasets

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        names = list(dataset)
        if split is None:
            raise DataError(f"a DatasetDict needs split=...; its splits are {names}")
        if split not in dataset:
            raise DataError(f"the DatasetDict has no split {split!r}; its splits are {names}")
        return dataset[split]
    if isinstance(dataset, datasets.IterableDataset):
        raise DataError("a streaming (iterable) dataset cannot be validated up front; load it without streaming=True")
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"expected a datasets.Dataset or DatasetDict, got {type(dataset).__name__}")
    return dataset


def _class_names(batch: dict, column: str, names: Sequence[str]) -> dict:
    """A ``ClassLabel`` column's integers read as its names; -1 (no label) and others stay."""
    return {column: [names[v] if isinstance(v, int) and 0 <= v < len(names) else v for v in batch[column]]}


def from_hf_dataset(
    dataset,
    text_columns: Union[str, Sequence[str]] = "text",
    label_column: Optional[str] = "label",
    label_names: Optional[Sequence[str]] = None,
    split: Optional[str] = None,
) -> TextClassificationData:
    """A ``datasets.Dataset`` (or one split of a ``DatasetDict``) as
    :class:`~pyro_monteclora.data.classification.TextClassificationData`, validated; the rows stay
    in Arrow (a memory-mapped data set is not copied into Python).

    :param text_columns: one column, or two for sentence pairs.
    :param label_column: ``None`` for unlabelled text.
    :param label_names: the label set (default: a ``ClassLabel`` column's names, else inferred as
        from a file).
    :param split: the split of a ``DatasetDict``.
    :raises DataError: a missing split or column (naming those that exist), or a bad row.
    """
    import datasets

    if isinstance(text_columns, str):
        text_columns = [text_columns]
    elif not (isinstance(text_columns, (list, tuple)) and all(isinstance(c, str) for c in text_columns)):
        raise DataError(f"text_columns must be a column name or a list of one or two names, got {text_columns!r}")
    text_columns = list(text_columns)
    data = _select_split(dataset, split)
    source = "the datasets.Dataset" + (f" (split {split!r})" if split is not None else "")
    columns = list(data.column_names)
    for column in text_columns + ([label_column] if label_column is not None else []):
        if column not in columns:
            raise DataError(f"{source}: no column {column!r}; its columns are {columns}")
    if len(data) == 0:
        raise DataError(f"{source} has no rows")
    feature = data.features.get(label_column) if label_column is not None else None
    if isinstance(feature, datasets.ClassLabel):
        # a ClassLabel's integers index its names: read them as the names, so that label_names (by
        # default the ClassLabel's own) may also reorder or extend them
        names = list(feature.names)
        data = data.select_columns(text_columns + [label_column])
        data = data.cast_column(label_column, datasets.Value("int64")).map(
            _class_names,
            batched=True,
            fn_kwargs={"column": label_column, "names": names},
            features=datasets.Features({**{c: data.features[c] for c in text_columns}, label_column: datasets.Json()}),
        )
        label_names = names if label_names is None else label_names
    return table_to_classification(data, source, text_columns, label_column, label_names)


def saved_dataset_folder(name: str) -> Optional[Path]:
    """``name`` as a folder written by ``Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``
    (``dataset_dict.json`` or ``state.json`` inside), else ``None`` (a hub name)."""
    path = Path(name)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        return path
    return None


def _saved_splits(path: Path) -> Dict[str, object]:
    """The splits of a saved data set: a ``DatasetDict``'s, or a single ``Dataset`` as ``train``."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises its own types for a damaged folder
        raise DataError(f"{path} is not a readable saved data set ({error})") from None
    if isinstance(loaded, datasets.DatasetDict):
        return dict(loaded)
    return {"train": loaded}


def load_hub_table(name: str, config: Optional[str], split: str):
    """A split of a Hugging Face hub data set (needs network for the hub), or of a data set saved
    with ``save_to_disk`` when ``name`` is its folder, as a ``datasets.Dataset`` (not copied)."""
    import datasets

    folder = saved_dataset_folder(name)
    if folder is not None:
        splits = _saved_splits(folder)
        if split not in splits:
            raise DataError(f"the saved data set {folder} has no split {split!r}; its splits are {list(splits)}")
        if len(splits[split]) == 0:
            raise DataError(f"the saved data set {folder} split {split!r} has no rows")
        return splits[split]
    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except Exception as error:  # datasets raises many types (network, missing split, ...)
        raise DataError(f"dataset {name!r} (config {config!r}), split {split!r}: {error}") from None
    if len(loaded) == 0:
        raise DataError(f"dataset {name!r} split {split!r} has no rows")
    return loaded


def hub_split_names(name: str, config: Optional[str]) -> Dict[str, str]:
    """The split names of a hub or saved data set (``train``/``validation``/``test`` where present)."""
    import datasets

    folder = saved_dataset_folder(name)
    if folder is not None:
        available = list(_saved_splits(folder))
        if "train" not in available:
            raise DataError(f"the saved data set {folder} has no 'train' split; its splits are {available}")
        return {split: split for split in ("train", "validation", "test") if split in available}
    try:
        available = datasets.get_dataset_split_names(name, config)
    except Exception as error:
        raise DataError(f"dataset {name!r} (config {config!r}): {error}") from None
    return {split: split for split in ("train", "validation", "test") if split in available}
