"""Your own Hugging Face ``datasets.Dataset`` or ``DatasetDict`` as labelled text.

:func:`from_hf_dataset` checks the split and the columns against the data set's schema before
reading a row, then validates every row as a file is validated
(:func:`~pyro_monteclora.data.records.records_to_classification`: empty texts, missing, NaN or
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
pyro_monteclora.data.records.DataError: ... no column 'sentence'; its columns are ['text', 'label']
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from pyro_monteclora.data.classification import TextClassificationData
from pyro_monteclora.data.records import DataError, records_to_classification

__all__ = ["from_hf_dataset"]


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


def from_hf_dataset(
    dataset,
    text_columns: Union[str, Sequence[str]] = "text",
    label_column: Optional[str] = "label",
    label_names: Optional[Sequence[str]] = None,
    split: Optional[str] = None,
) -> TextClassificationData:
    """A ``datasets.Dataset`` (or one split of a ``DatasetDict``) as
    :class:`~pyro_monteclora.data.classification.TextClassificationData`, validated.

    :param text_columns: one column, or two for sentence pairs.
    :param label_column: ``None`` for unlabelled text.
    :param label_names: the label set (default: a ``ClassLabel`` column's names, else inferred as
        from a file).
    :param split: the split of a ``DatasetDict``.
    :raises DataError: a missing split or column (naming those that exist), or a bad row.
    """
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
    rows = data.select_columns(text_columns + ([label_column] if label_column is not None else [])).to_list()
    if feature is not None and hasattr(feature, "names") and hasattr(feature, "int2str"):
        # a ClassLabel's integers index its names: read them as the names, so that label_names (by
        # default the ClassLabel's own) may also reorder or extend them; -1 (no label) stays -1
        names = list(feature.names)
        for row in rows:
            value = row[label_column]
            if isinstance(value, int) and 0 <= value < len(names):
                row[label_column] = names[value]
        label_names = names if label_names is None else label_names
    return records_to_classification(rows, source, text_columns, label_column, label_names)
