"""Property-based tests (hypothesis) for the metrics and the Wishart sampler, and the Bartlett
sampler's validity over a million draws."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_monteclora.distributions import WishartCholesky
from pyro_monteclora.evaluation.metrics import (
    accuracy,
    brier_score,
    expected_calibration_error,
    negative_log_likelihood,
)

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def predictions(draw):
    """Probabilities (softmax of arbitrary finite logits, some very peaked) and labels."""
    n = draw(st.integers(1, 40))
    k = draw(st.integers(2, 5))
    logits = draw(st.lists(st.floats(-30, 30, allow_nan=False), min_size=n * k, max_size=n * k))
    labels = draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n))
    probs = torch.tensor(logits, dtype=torch.float64).reshape(n, k).softmax(-1)
    return probs, torch.tensor(labels)


@SETTINGS
@given(predictions(), st.integers(1, 30))
def test_metric_ranges(data, bins):
    probs, labels = data
    assert 0.0 <= expected_calibration_error(probs, labels, bins) <= 1.0
    assert 0.0 <= brier_score(probs, labels) <= 2.0
    assert negative_log_likelihood(probs, labels) >= 0.0
    assert 0.0 <= accuracy(probs, labels) <= 1.0


@SETTINGS
@given(predictions(), st.randoms(use_true_random=False))
def test_metrics_do_not_depend_on_the_order_of_examples(data, rng):
    probs, labels = data
    order = list(range(len(labels)))
    rng.shuffle(order)
    index = torch.tensor(order)
    for metric in (accuracy, brier_score, negative_log_likelihood, expected_calibration_error):
        assert metric(probs[index], labels[index]) == pytest.approx(metric(probs, labels), abs=1e-12)


@SETTINGS
@given(
    st.integers(1, 6),
    st.floats(0.0, 5.0),
    st.lists(st.floats(-3, 3), min_size=6, max_size=6),
    st.integers(0, 2**31 - 1),
)
def test_wishart_cholesky_draws_are_valid_factors_with_finite_density(rank, extra_df, log_scale, seed):
    df = rank - 1 + 1e-3 + extra_df
    torch.manual_seed(seed)
    distribution = WishartCholesky.from_log_diagonal(df, torch.tensor(log_scale[:rank]))
    value = distribution.rsample((8,))
    assert value.shape == (8, rank, rank)
    assert torch.equal(value, value.tril())
    assert bool((value.diagonal(dim1=-2, dim2=-1) > 0).all())
    assert bool(torch.isfinite(distribution.log_prob(value)).all())


@pytest.mark.parametrize("rank", [4, 8])
def test_a_million_bartlett_draws_at_df_equal_rank_are_all_valid(rank):
    torch.manual_seed(0)
    distribution = WishartCholesky.from_log_diagonal(float(rank), torch.zeros(rank))
    for _ in range(4):  # 4 x 250,000 draws
        value = distribution.rsample((250_000,))
        diagonal = value.diagonal(dim1=-2, dim2=-1)
        assert bool(torch.isfinite(value).all())
        assert bool((diagonal > 0).all()), diagonal.min()
        # E[L_jj^2] = df - j for the identity scale (chi-square with df - j degrees of freedom)
        expected = torch.tensor([rank - j for j in range(rank)], dtype=value.dtype)
        assert torch.allclose(diagonal.pow(2).mean(0), expected, rtol=0.02)
    assert math.isfinite(distribution.log_prob(value[:1000]).sum().item())


# -- the file readers and label parsing over arbitrary bytes, text, nesting and unicode --------------
# The only outcomes allowed: a loaded data set, or a DataError naming the file (and the row where
# one is at fault). Anything else (a traceback) is a bug.

import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from hypothesis import HealthCheck, assume  # noqa: E402

from pyro_monteclora.data.records import DataError, load_classification_file, records_to_classification  # noqa: E402

READERS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: any JSON value: scalars (NaN, infinities, 40-digit integers, any unicode) nested in lists and objects
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**40), 10**40) | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)
#: texts with the characters that break line- and field-splitting: separators, quotes, U+2028,
#: form feeds, zero-width and control characters
AWKWARD_TEXT = st.text(
    # any character a UTF-8 file can hold: lone surrogates (category Cs) cannot be encoded at all
    st.sampled_from(list("ab ,\t\"'\n\r\x0c\x1c\x00\u2028\u2029\u200b\ufeff\u0301é😀"))
    | st.characters(blacklist_categories=("Cs",)),
    max_size=12,
)


def loaded_or_named_error(path: Path, text_columns=("text",), label_column="label", rows=None):
    """Load ``path``; a DataError must name it (and, if it names a row, one that exists)."""
    try:
        data = load_classification_file(path, list(text_columns), label_column)
    except DataError as error:
        message = str(error)
        assert str(path) in message, message
        for place in re.findall(r"(?:row|line|record) (\d+)", message):
            assert 1 <= int(place) <= max(rows or 1, path.read_bytes().count(b"\n") + 1), message
        return None
    assert len(data.texts) == len(data.labels) >= 1
    assert all(isinstance(t, str) and t.strip() for t in data.texts)
    assert all(0 <= label < len(data.label_names) for label in data.labels)
    return data


@READERS
@given(st.binary(max_size=200), st.sampled_from([".csv", ".tsv", ".json", ".jsonl"]))
def test_any_bytes_load_or_fail_naming_the_file(content, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        loaded_or_named_error(path)


@READERS
@given(
    st.lists(st.fixed_dictionaries({"text": JSON_VALUES | AWKWARD_TEXT, "label": JSON_VALUES}), min_size=1, max_size=6),
    st.sampled_from([".json", ".jsonl"]),
)
def test_any_json_records_load_or_fail_naming_the_file_and_row(rows, suffix):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        if suffix == ".json":
            path.write_text(json.dumps(rows), encoding="utf-8")
        else:
            path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        loaded_or_named_error(path, rows=len(rows))


@READERS
@given(st.lists(st.lists(AWKWARD_TEXT, min_size=1, max_size=3), min_size=1, max_size=6), st.sampled_from([",", "\t"]))
def test_csv_written_by_the_csv_module_reads_back_what_it_holds(rows, delimiter):
    """Whatever the fields hold (separators, quotes, line breaks), a file written by ``csv.writer``
    under a ``text,label`` header loads only when every row has those two fields, and then with the
    same texts; otherwise it fails with a DataError naming it (no field is dropped silently)."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("data.csv" if delimiter == "," else "data.tsv")
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, delimiter=delimiter)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
        path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
        data = loaded_or_named_error(path, rows=len(rows))
        if data is not None:
            assert all(len(row) == 2 for row in rows)
            assert data.texts == [row[0].strip() for row in rows]


@READERS
@given(st.integers(1, 5000), st.sampled_from(["[", '{"a": ']))
def test_nesting_at_any_depth_loads_or_fails_naming_the_file(depth, opener):
    closer = "]" if opener == "[" else "}"
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        path.write_text(
            '{"text": "a", "label": ' + opener * depth + "1" + closer * depth + '}\n{"text": "b", "label": 0}\n',
            encoding="utf-8",
        )
        loaded_or_named_error(path, rows=2)


@READERS
@given(st.lists(JSON_VALUES, min_size=1, max_size=8), st.booleans())
def test_label_parsing_of_any_values(labels, with_label_set):
    rows = [{"text": f"text {i}", "label": label} for i, label in enumerate(labels)]
    try:
        data = records_to_classification(
            rows, "source.jsonl", ["text"], "label", ["0", "1", "neg", "pos"] if with_label_set else None
        )
    except DataError as error:
        assert str(error).startswith("source.jsonl"), str(error)
        return
    assert len(data.labels) == len(labels)
    assert all(0 <= label < len(data.label_names) for label in data.labels)


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.none() | AWKWARD_TEXT, st.integers(-3, 3) | st.none()), min_size=1, max_size=5))
def test_parquet_rows_load_or_fail_naming_the_file(rows):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.parquet"
        try:
            table = pyarrow.table({"text": [text for text, _ in rows], "label": [label for _, label in rows]})
        except (pyarrow.ArrowException, UnicodeEncodeError):
            assume(False)  # not representable in parquet (a lone surrogate)
        parquet.write_table(table, path)
        loaded_or_named_error(path, rows=len(rows))
