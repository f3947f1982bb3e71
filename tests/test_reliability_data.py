"""Issue 21: data that used to be read wrongly or silently.

Each case must now end in one line on stderr and exit status 2 (or a :class:`DataError` naming the
file) with nothing on disk changed, or, for inputs that are valid, in the right result: duplicate
columns, one-class training sets and bad labels are refused, ``1`` and ``1.0`` are one label, lines
split on ``\\n`` only, and any labels or texts load or fail naming the file. What the commands
write (``--overwrite``, folder locks, NaN weights, shared outputs) is ``test_reliability_outputs.py``,
which shares :func:`tiny_train`, :func:`refused` and the ``run`` fixture.
"""

import argparse
import itertools
import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_cli import data_dir, model_dir, sentences, write_jsonl  # noqa: F401 (fixtures)

from pyro_monteclora.cli import main
from pyro_monteclora.data.files import read_records
from pyro_monteclora.data.records import DataError, has_visible_text, load_classification_file


def tiny_train(model_dir, train_file, output, *extra):
    return [
        "train",
        "--model",
        str(model_dir),
        "--train-file",
        str(train_file),
        "--rank",
        "4",
        "--batch-size",
        "8",
        "--max-length",
        "16",
        "--epochs",
        "1",
        "--no-validation",
        "--output",
        str(output),
        *extra,
    ]


def refused(capsys, argv, pattern=None):
    """Run ``argv``; it must exit 2 with one line on stderr (matching ``pattern``)."""
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert err.startswith("pyro-monteclora") and "\n" not in err, err
    if pattern is not None:
        assert __import__("re").search(pattern, err), err
    return err


@pytest.fixture(scope="module")
def run(model_dir, data_dir, tmp_path_factory):  # noqa: F811
    output = tmp_path_factory.mktemp("runs") / "run"
    assert main(tiny_train(model_dir, data_dir / "train.jsonl", output)) == 0
    return output


# -- 3. duplicate columns --------------------------------------------------------------------------

DUPLICATES = [  # (file name, content, where)
    ("dup.csv", "text,text,label\na film,good,1\nb,c,0\n", r"dup\.csv line 1: the column 'text' appears twice"),
    ("dup.tsv", "text\tlabel\tlabel\na\t1\t0\n", r"dup\.tsv line 1: the column 'label' appears twice"),
    (
        "dup.jsonl",
        '{"text": "a", "label": 1}\n{"text": "a", "text": "b", "label": 0}\n',
        r"dup\.jsonl line 2: the field 'text' appears twice",
    ),
    ("dup.json", '[{"text": "a", "label": 1, "label": 0}]', r"dup\.json: the field 'label' appears twice"),
]


@pytest.mark.parametrize("name, content, pattern", DUPLICATES, ids=[c[0] for c in DUPLICATES])
def test_duplicate_columns_are_refused_naming_the_file_and_the_column(tmp_path, name, content, pattern):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError, match=pattern):
        load_classification_file(path, ["text"], "label")


def test_duplicate_parquet_columns_are_refused_in_one_line(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    path = tmp_path / "dup.parquet"
    parquet.write_table(
        pyarrow.table(
            [pyarrow.array(["a"]), pyarrow.array(["b"]), pyarrow.array([1])], names=["text", "text", "label"]
        ),
        path,
    )
    with pytest.raises(DataError, match=r"dup\.parquet: the column 'text' appears twice") as raised:
        read_records(path)
    assert "\n" not in str(raised.value)


def test_train_refuses_a_csv_with_a_duplicate_column(model_dir, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "dup.csv"
    path.write_text("text,text,label\n" + "".join(f"{r['text']},x,{r['label']}\n" for r in sentences(8, 0)))
    refused(capsys, tiny_train(model_dir, path, tmp_path / "out"), r"the column 'text' appears twice")
    assert not (tmp_path / "out").exists()


# -- 4. a classifier needs two labels --------------------------------------------------------------


def test_a_one_class_training_set_is_refused(model_dir, data_dir, tmp_path, capsys):  # noqa: F811
    one_class = write_jsonl(tmp_path / "pos.jsonl", [r for r in sentences(16, 0) if r["label"] == "pos"])
    one_row = write_jsonl(tmp_path / "one.jsonl", sentences(1, 0))
    integers = write_jsonl(tmp_path / "ones.jsonl", [{"text": "a film", "label": 1}] * 4)
    out = tmp_path / "out"
    refused(
        capsys,
        tiny_train(model_dir, one_class, out),
        r"pos\.jsonl: a classifier needs at least two labels .*, but all its 8 rows have the label 'pos'",
    )
    refused(capsys, tiny_train(model_dir, one_row, out), r"one\.jsonl: .*, but its only row has the label")
    refused(capsys, tiny_train(model_dir, integers, out), r"ones\.jsonl: .* have the label '1'")
    refused(
        capsys,
        tiny_train(model_dir, data_dir / "train.jsonl", out, "--max-train-samples", "1"),
        r"train\.jsonl: .*its only row \(--max-train-samples 1\) has the label 'neg'",
    )
    refused(
        capsys,
        [
            "sweep",
            "--model",
            str(model_dir),
            "--train-file",
            str(one_class),
            "--methods",
            "lora",
            "--test-file",
            str(data_dir / "test.jsonl"),
            "--output",
            str(out),
        ],
        r"needs at least two labels",
    )
    assert not out.exists()


# -- 5. labels ---------------------------------------------------------------------------------------


def test_one_and_one_point_zero_are_one_label(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"text": "a", "label": 1},
            {"text": "b", "label": 1.0},
            {"text": "c", "label": "1"},
            {"text": "d", "label": 0},
        ],
    )
    data = load_classification_file(path, ["text"], "label")
    assert data.label_names == ["0", "1"] and data.labels == [1, 1, 1, 0]
    csv = tmp_path / "mixed.csv"
    csv.write_text("text,label\na,1\nb,1.0\nc, 0 \nd,2e0\n")
    data = load_classification_file(csv, ["text"], "label")
    assert data.label_names == ["0", "1", "2"] and data.labels == [1, 1, 0, 2]
    # against a given label set (a checkpoint's), too
    data = load_classification_file(path, ["text"], "label", label_names=["0", "1"])
    assert data.labels == [1, 1, 1, 0]


BAD_LABELS = [  # (jsonl lines, error pattern)
    (
        '{"text": "a", "label": 0}\n{"text": "b", "label": NaN}\n',
        r"row 2: label 'nan' in column 'label' is not a finite number",
    ),
    ('{"text": "a", "label": Infinity}\n', r"row 1: label 'inf' .* is not a finite number"),
    ('{"text": "a", "label": 0.5}\n', r"row 1: label '0.5' .* is a number with a fraction"),
    ('{"text": "a", "label": null}\n', r"row 1: no label in column 'label'"),
    ('{"text": "a"}\n', r"no column 'label'"),
    ('{"text": "a", "label": 0}\n{"text": "b"}\n', r"row 2: no label in column 'label'"),
    ('{"text": "a", "label": [1]}\n', r"row 1: label '\[1\]' .* is a list, not a number or a name"),
]


@pytest.mark.parametrize("content, pattern", BAD_LABELS, ids=[p[:20] for _, p in BAD_LABELS])
def test_a_missing_or_nan_label_is_an_error_naming_the_row(tmp_path, content, pattern):
    path = tmp_path / "labels.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=pattern) as raised:
        load_classification_file(path, ["text"], "label")
    assert str(path) in str(raised.value)


def test_strings_that_only_look_like_integers_are_names(tmp_path):
    from pyro_monteclora.data.records import label_key

    path = tmp_path / "odd.csv"
    path.write_text("text,label\na,--1\nb,\u00b2\nc,\u0661\nd,1\n")
    data = load_classification_file(path, ["text"], "label")
    assert data.label_names == ["--1", "1", "\u00b2", "\u0661"] and data.labels == [0, 2, 3, 1]
    assert [label_key(v) for v in ("--1", "\u00b2", " 7 ", "+3", "-0", 2.0)] == ["--1", "\u00b2", 7, 3, 0, 2]
    big = tmp_path / "big.csv"
    big.write_text("text,label\na," + "9" * 5000 + "\nb,0\n")
    with pytest.raises(DataError, match=r"big\.csv row 1: label .* is a number too large"):
        load_classification_file(big, ["text"], "label")


def test_task_labels_and_multiple_choice_answers_refuse_unicode_digits():
    from pyro_monteclora.data.multiple_choice import parse_answer
    from pyro_monteclora.data.tasks import get_task

    mrpc = get_task("mrpc")
    assert mrpc.normalise_label(1.0, "f.jsonl row 1") == mrpc.label_names[1]
    with pytest.raises(DataError, match=r"row 1: label '\u00b2'"):
        mrpc.normalise_label("\u00b2", "f.jsonl row 1")
    assert parse_answer(1.0, ["a", "b"], "q.jsonl line 1") == 1
    for value in ("\u00b2", "answer\u00b2", "9" * 5000):
        with pytest.raises(DataError, match=r"q\.jsonl line 1: answer"):
            parse_answer(value, ["a", "b"], "q.jsonl line 1")


# -- 7. lines end at \n or \r\n only -----------------------------------------------------------------

SEPARATORS = "\u2028\u2029\x0c\x0b\x85\x1c"


def test_a_jsonl_file_with_unicode_line_separators_inside_strings_is_read(tmp_path):
    path = tmp_path / "sep.jsonl"
    rows = [{"text": f"one{c}two", "label": i % 2} for i, c in enumerate(SEPARATORS)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in rows), encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")  # raw, not escaped
    data = load_classification_file(path, ["text"], "label")
    assert data.texts == [r["text"] for r in rows]


def test_predict_gives_one_prediction_per_input_line(run, tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    lines = [f"a film{c}good" for c in SEPARATORS] + ["a film bad"]
    texts.write_text("\r\n".join(lines) + "\n", encoding="utf-8")
    assert main(["predict", "--checkpoint", str(run), "--input", str(texts), "--num-samples", "0"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.split("\n") if line]
    assert [row["text"] for row in out] == lines


def test_generate_reads_one_prompt_per_line(tmp_path):
    from pyro_monteclora.cli.generate import _read_prompts

    path = tmp_path / "prompts.txt"
    path.write_text("capital\u2028of peru ?\r\nwhat\x0cis it ?\n\n", encoding="utf-8")
    args = argparse.Namespace(prompt=None, prompt_file=str(path), prompt_column=None)
    assert _read_prompts(args).prompts == ["capital\u2028of peru ?", "what\x0cis it ?"]


# -- properties: a data file loads or raises a DataError naming it, nothing else ---------------------

LABELS = st.one_of(
    st.text(max_size=8),
    st.integers(-3, 12),
    st.floats(),
    st.booleans(),
    st.none(),
    st.sampled_from(["1", "1.0", " 2 ", "--1", "\u00b2", "\u0661", "nan", "1e0"]),
)
TEXTS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(LABELS, min_size=1, max_size=6))
@example(["\u00b2", "--1", 1])
@example([1, 1.0, "1", 0])
@example([0, float("nan")])
@example([" a", "a", "b"])  # a name label is stripped: one class
def test_any_labels_load_or_raise_a_data_error_naming_the_file(labels):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.jsonl"
        path.write_text("".join(json.dumps({"text": "a film", "label": v}) + "\n" for v in labels))
        try:
            data = load_classification_file(path, ["text"], "label")
        except DataError as error:
            assert str(path) in str(error) and "\n" not in str(error)
            return
    from pyro_monteclora.data.records import label_key

    # a name label is its text without surrounding spaces (records_to_classification strips it)
    keys = [label_key(v.strip() if isinstance(v, str) else v) for v in labels]
    for i, j in itertools.combinations(range(len(labels)), 2):  # equal keys, one class
        assert (data.labels[i] == data.labels[j]) == (keys[i] == keys[j] or str(keys[i]) == str(keys[j]))
    assert all(not (isinstance(v, float) and not math.isfinite(v)) for v in labels)


@settings(max_examples=150, deadline=None)
@given(st.lists(TEXTS, min_size=1, max_size=4))
@example(["one\u2028two", "form\x0cfeed", "next\x85line"])
def test_any_text_in_a_jsonl_file_reads_back_as_written(texts):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "texts.jsonl"
        path.write_text(
            "".join(json.dumps({"text": t, "label": i % 2}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
            encoding="utf-8",
        )
        try:
            data = load_classification_file(path, ["text"], "label")
        except DataError as error:
            # empty: nothing but white space, control or format characters (has_visible_text)
            assert str(path) in str(error) and any(not has_visible_text(t) for t in texts)
            return
    assert data.texts == [t.strip() for t in texts]
