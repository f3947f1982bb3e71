"""The paper's tasks on small local files of their schemas (no GLUE, SuperGLUE, commonsense or
GSM8k set installs offline): each trains and evaluates through the command line and reports its own
metric, checked against the per-example predictions by hand."""

import json
import math

import pytest
from conftest import CAPITALS, COUNTRIES, sum_rows
from test_cli import NEGATIVE, POSITIVE, model_dir, sentences, write_jsonl  # noqa: F401
from test_cli_decoders import decoder_dir  # noqa: F401 (module fixture)

from pyro_monteclora.cli import main
from pyro_monteclora.data.records import DataError
from pyro_monteclora.data.tasks import TASKS, commonsense_options, commonsense_to_multiple_choice, get_task, task_score


def _schema_rows(task: str, count: int, seed: int):
    """``count`` records in the task's hub schema (labels as the hub's integers, except WiC and
    BoolQ, which use SuperGLUE's original ``true``/``false``)."""
    rows = []
    for i, row in enumerate(sentences(count, seed)):
        label = int(row["label"] == "pos")
        other = "a film " + " ".join((POSITIVE if label else NEGATIVE)[(i + k) % 4] for k in range(2))
        rows.append(
            {
                "mrpc": {"sentence1": row["text"], "sentence2": other, "label": label, "idx": i},
                "rte": {"sentence1": row["text"], "sentence2": other, "label": 1 - label, "idx": i},
                "cola": {"sentence": row["text"], "label": label, "idx": i},
                "wic": {
                    "word": "film",
                    "sentence1": row["text"],
                    "sentence2": other,
                    "label": bool(label),
                    "idx": i,
                    "start1": 2,
                    "end1": 6,
                },
                "boolq": {"question": "is it good", "passage": row["text"], "label": bool(label), "idx": i},
            }[task]
        )
    return rows


@pytest.mark.parametrize("name", ["mrpc", "cola", "rte", "wic", "boolq"])
def test_a_glue_or_superglue_task_from_local_files_reports_its_metric(name, model_dir, tmp_path):  # noqa: F811
    spec = get_task(name)
    train = write_jsonl(tmp_path / "train.jsonl", _schema_rows(name, 32, 0))
    validation = write_jsonl(tmp_path / "validation.jsonl", _schema_rows(name, 16, 1))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--task",
                name,
                "--model",
                str(model_dir),
                "--train-file",
                str(train),
                "--validation-file",
                str(validation),
                "--rank",
                "4",
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--max-length",
                "24",
                "--learning-rate",
                "0.01",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    data = json.loads((run / "run.json").read_text())["data"]
    assert data["task"] == name and data["label_names"] == list(spec.label_names)
    assert data["text_columns"] == list(spec.text_columns)
    # no test file: GLUE-style results come from the validation split, as the paper's
    assert main(["evaluate", "--checkpoint", str(run), "--num-samples", "2"]) == 0
    result = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert result["task"] == name and result["task_metric"] == spec.metric and result["split"] == "validation"
    rows = [json.loads(line) for line in (run / "evaluation" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16
    truth = [
        spec.label_names[1 - int(r["label"] == "pos")] if name == "rte" else spec.label_names[int(r["label"] == "pos")]
        for r in sentences(16, 1)
    ]
    assert [r["label"] for r in rows] == truth
    accuracy = sum(r["predicted"] == r["label"] for r in rows) / len(rows)
    assert result["metrics"]["accuracy"] == pytest.approx(accuracy)
    if name == "wic":
        assert all(r["text"].startswith("film: a film ") for r in rows)
    if name == "cola":  # Matthews correlation from the confusion counts, by hand
        positive = spec.label_names[1]
        tp = sum(r["predicted"] == positive and r["label"] == positive for r in rows)
        tn = sum(r["predicted"] != positive and r["label"] != positive for r in rows)
        fp = sum(r["predicted"] == positive and r["label"] != positive for r in rows)
        fn = sum(r["predicted"] != positive and r["label"] == positive for r in rows)
        denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        expected = (tp * tn - fp * fn) / denominator if denominator else 0.0
        assert result["metrics"]["matthews_correlation"] == pytest.approx(expected)
        assert task_score("cola", result["metrics"]) == ("matthews_correlation", pytest.approx(expected))


def test_a_task_without_files_reads_its_hub_data_set_and_scores_on_validation(
    model_dir,
    tmp_path,  # noqa: F811
    monkeypatch,
):
    import datasets

    import pyro_monteclora.data.hf_datasets as datafiles

    splits = {
        "train": _schema_rows("rte", 16, 0),
        "validation": _schema_rows("rte", 8, 1),
        "test": [dict(r, label=-1) for r in _schema_rows("rte", 8, 2)],
    }  # GLUE hides test labels
    calls = []
    monkeypatch.setattr(datafiles, "hub_split_names", lambda name, config: {s: s for s in splits})
    monkeypatch.setattr(
        datafiles,
        "load_hub_table",
        lambda name, config, split: calls.append((name, config, split)) or datasets.Dataset.from_list(splits[split]),
    )
    run = tmp_path / "rte"
    assert (
        main(
            [
                "train",
                "--task",
                "rte",
                "--model",
                str(model_dir),
                "--epochs",
                "1",
                "--rank",
                "4",
                "--max-length",
                "24",
                "--no-validation",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    assert calls[0] == ("nyu-mll/glue", "rte", "train")
    assert main(["evaluate", "--checkpoint", str(run), "--num-samples", "0"]) == 0
    assert calls[-1] == ("nyu-mll/glue", "rte", "validation")
    assert json.loads((run / "evaluation" / "metrics.json").read_text())["examples"] == 8


def test_labels_in_every_accepted_form_and_a_clear_error_otherwise():
    wic, mrpc = get_task("wic"), get_task("mrpc")
    assert [wic.normalise_label(v, "f") for v in (True, 0, "1", "true", "False", "no")] == [
        "True",
        "False",
        "True",
        "True",
        "False",
        "False",
    ]
    assert [mrpc.normalise_label(v, "f") for v in (1, "0", "Equivalent")] == [
        "equivalent",
        "not_equivalent",
        "equivalent",
    ]
    with pytest.raises(
        DataError,
        match=r"mrpc.jsonl line 3: label 'maybe' in column 'label' is not one of "
        r"mrpc's labels: 0..1 or \['not_equivalent', 'equivalent'\]",
    ):
        mrpc.normalise_label("maybe", "mrpc.jsonl line 3")
    # --text-column / --label-column override the task's columns
    renamed = wic.classification_rows(
        [{"word": "bank", "a": "the bank", "b": "a bank", "y": "true"}], "f", ["a", "b"], "y"
    )
    assert renamed == [{"word": "bank", "a": "bank: the bank", "b": "a bank", "y": "True"}]
    with pytest.raises(DataError, match="no 'word'"):
        wic.classification_rows([{"sentence1": "a", "sentence2": "b", "label": 1}], "wic.jsonl")
    with pytest.raises(ValueError, match="unknown task 'sst9'; choose one of"):
        get_task("sst9")
    assert {spec.kind for spec in TASKS.values()} == {"classification", "multiple-choice", "generation"}


def _commonsense_rows(count: int, offset: int = 0):
    """PIQA-style records in LLM-Adapters' commonsense_15k schema (two solutions, one right)."""
    rows = []
    for i in range(count):
        country, right, wrong = COUNTRIES[i % 8], CAPITALS[i % 8], CAPITALS[(i + 3) % 8]
        first = (i + offset) % 2 == 0
        options = (right, wrong) if first else (wrong, right)
        answer = "solution1" if first else "solution2"
        rows.append(
            {
                "instruction": f"choose the correct solution : what is the capital of {country} ? "
                f"solution1 {options[0]} solution2 {options[1]} answer format: "
                f"solution1/solution2",
                "input": "",
                "output": f"the correct answer is {answer}",
                "answer": answer,
            }
        )
    return rows


def test_commonsense_records_become_scored_options():
    rows = [(f"line {i}", r) for i, r in enumerate(_commonsense_rows(3), start=1)]
    data = commonsense_to_multiple_choice(get_task("piqa"), rows, "piqa.json")
    assert data.choices[0] == ["the correct answer is solution1", "the correct answer is solution2"]
    assert data.answers == [0, 1, 0]
    # the answer may come from the output alone, and the options from the task when none are listed
    bare = {"instruction": "which one ?", "input": "", "output": "the correct answer is option2"}
    data = commonsense_to_multiple_choice(get_task("winogrande"), [("line 1", bare)], "wg.json")
    assert data.answers == [1] and len(data.choices[0]) == 2
    assert commonsense_options("Answer format: answer1/answer2/answer3", ()) == ["answer1", "answer2", "answer3"]
    with pytest.raises(DataError, match=r"siqa.json line 1: answer 'answer4' is not one of the question's options"):
        commonsense_to_multiple_choice(get_task("siqa"), [("line 1", dict(bare, answer="answer4"))], "siqa.json")


def test_a_commonsense_task_trains_on_instructions_and_scores_the_options(decoder_dir, tmp_path):
    train = write_jsonl(tmp_path / "commonsense_15k.jsonl", _commonsense_rows(16))
    test = write_jsonl(tmp_path / "piqa_test.jsonl", _commonsense_rows(8, offset=1))
    run = tmp_path / "piqa"
    assert (
        main(
            [
                "train",
                "--task",
                "piqa",
                "--model",
                str(decoder_dir),
                "--train-file",
                str(train),
                "--test-file",
                str(test),
                "--rank",
                "4",
                "--target-modules",
                "q_proj,v_proj",
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--learning-rate",
                "0.02",
                "--max-length",
                "48",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    assert json.loads((run / "run.json").read_text())["arguments"]["task_type"] == "causal-lm"
    assert main(["evaluate", "--checkpoint", str(run), "--num-samples", "3"]) == 0
    result = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert result["task"] == "piqa" and result["task_metric"] == "accuracy" and result["examples"] == 8
    rows = [json.loads(line) for line in (run / "evaluation" / "predictions.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows] == [1, 0, 1, 0, 1, 0, 1, 0]
    assert result["metrics"]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 8)
    nll = -sum(math.log(r["probabilities"][r["answer"]]) for r in rows) / 8
    assert result["metrics"]["nll"] == pytest.approx(nll)
    # another file of the schema is scored the same way: the task comes with the checkpoint
    other = write_jsonl(tmp_path / "other.jsonl", _commonsense_rows(4))
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run),
                "--test-file",
                str(other),
                "--num-samples",
                "0",
                "--output",
                str(tmp_path / "other"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "other" / "metrics.json").read_text())["task"] == "piqa"
    # and plain question/choices/answer records are still scored as such
    plain = write_jsonl(
        tmp_path / "plain.jsonl",
        [
            {
                "question": f"what is the capital of {COUNTRIES[i]} ?",
                "choices": [CAPITALS[i], CAPITALS[i - 1]],
                "answer": 0,
            }
            for i in range(3)
        ],
    )
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run),
                "--multiple-choice",
                "--test-file",
                str(plain),
                "--num-samples",
                "0",
                "--output",
                str(tmp_path / "plain"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    assert result["task"] is None and result["examples"] == 3


def test_gsm8k_reports_the_exact_match_of_the_final_number(decoder_dir, tmp_path):
    train = write_jsonl(tmp_path / "gsm8k_train.jsonl", sum_rows(16, seed=0))
    test = write_jsonl(tmp_path / "gsm8k_test.jsonl", sum_rows(6, seed=1))
    run = tmp_path / "gsm8k"
    assert (
        main(
            [
                "train",
                "--task",
                "gsm8k",
                "--model",
                str(decoder_dir),
                "--train-file",
                str(train),
                "--test-file",
                str(test),
                "--rank",
                "4",
                "--target-modules",
                "q_proj,v_proj",
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--learning-rate",
                "0.02",
                "--max-length",
                "32",
                "--no-validation",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    assert main(["evaluate", "--checkpoint", str(run), "--num-samples", "2", "--max-new-tokens", "8"]) == 0
    result = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert result["task"] == "gsm8k" and result["task_metric"] == "exact_match"
    rows = [json.loads(line) for line in (run / "evaluation" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["generations"]) == 2 for r in rows)
    references = [r["answer"].split("####")[-1].strip() for r in sum_rows(6, seed=1)]
    by_hand = sum(r["answer"] == ref for r, ref in zip(rows, references)) / 6
    assert result["metrics"]["exact_match"] == pytest.approx(by_hand)
    assert result["metrics"]["token_nll"] > 0


def test_a_task_of_the_wrong_kind_is_refused_in_one_line(model_dir, decoder_dir, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "x"
    assert main(["train", "--task", "piqa", "--model", str(decoder_dir), "--output", str(run)]) == 2
    assert "commonsense_15k schema" in capsys.readouterr().err
    assert (
        main(["train", "--task", "cola", "--task-type", "causal-lm", "--model", str(decoder_dir), "--output", str(run)])
        == 2
    )
    assert "--task cola is a classification task" in capsys.readouterr().err
    classifier = tmp_path / "clf"
    train = write_jsonl(tmp_path / "t.jsonl", _schema_rows("cola", 8, 0))
    assert (
        main(
            [
                "train",
                "--task",
                "cola",
                "--model",
                str(model_dir),
                "--train-file",
                str(train),
                "--epochs",
                "1",
                "--rank",
                "4",
                "--max-length",
                "16",
                "--no-validation",
                "--output",
                str(classifier),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(classifier), "--task", "piqa"]) == 2
    assert "--task piqa is a multiple-choice task for decoders" in capsys.readouterr().err
    assert not run.exists()
