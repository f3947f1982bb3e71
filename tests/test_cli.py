"""The pyro-monteclora command on a tiny random BERT saved to disk and tiny data files."""

import json
import math
import os
from pathlib import Path

import pytest
import torch
import transformers
from conftest import tiny_bert_classifier
from safetensors.torch import load_file

from pyro_monteclora.cli import main

WORDS = ["good", "great", "fine", "fun", "bad", "dull", "awful", "boring", "a", "film", "very", "not", "plot", "acting"]
POSITIVE, NEGATIVE = WORDS[:4], WORDS[4:8]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tokenizer = transformers.BertTokenizer(vocab={word: i for i, word in enumerate(vocab)})
    tokenizer.save_pretrained(folder)
    tiny_bert_classifier().save_pretrained(folder)
    return folder


def sentences(count, seed):
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(count):
        label = i % 2
        words = POSITIVE if label else NEGATIVE
        picks = torch.randint(0, 4, (3,), generator=generator).tolist()
        rows.append({"text": "a film " + " ".join(words[p] for p in picks), "label": "pos" if label else "neg"})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    write_jsonl(folder / "train.jsonl", sentences(48, 0))
    validation = sentences(16, 1)
    (folder / "validation.csv").write_text("text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in validation))
    write_jsonl(folder / "test.jsonl", sentences(24, 2))
    return folder


def train_args(model_dir, data_dir, output, *extra):
    return [
        "train",
        "--model",
        str(model_dir),
        "--train-file",
        str(data_dir / "train.jsonl"),
        "--validation-file",
        str(data_dir / "validation.csv"),
        "--test-file",
        str(data_dir / "test.jsonl"),
        "--rank",
        "4",
        "--batch-size",
        "8",
        "--max-length",
        "16",
        "--learning-rate",
        "0.01",
        "--output",
        str(output),
        *extra,
    ]


def test_train_evaluate_predict(model_dir, data_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(model_dir, data_dir, run, "--epochs", "2", "--sample-scaler", "0.2")) == 0
    recorded = json.loads((run / "run.json").read_text())
    assert recorded["data"]["label_names"] == ["neg", "pos"]
    summary = json.loads((run / "train_summary.json").read_text())
    assert [e["epoch"] for e in summary["epochs"]] == [0, 1] and summary["steps"] == 12
    assert {"accuracy", "nll", "ece"} <= set(summary["epochs"][-1])  # per-epoch validation ran
    assert {p.name for p in (run / "checkpoint").iterdir()} >= {
        "monteclora_config.json",
        "model.safetensors",
        "training_state.json",
        "training_state.safetensors",
        "tokenizer_config.json",
    }

    assert main(["evaluate", "--checkpoint", str(run), "--num-samples", "3", "--ece-bins", "5"]) == 0
    results = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert "fractions" in results["units"] and results["num_samples"] == 3
    assert results["examples"] == 24 and results["ece_bins"] == 5
    rows = [json.loads(line) for line in (run / "evaluation" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24
    # the metrics agree with the per-example output, computed by hand
    accuracy = sum(r["predicted"] == r["label"] for r in rows) / len(rows)
    nll = -sum(math.log(r["probabilities"][r["label"]]) for r in rows) / len(rows)
    assert results["metrics"]["accuracy"] == pytest.approx(accuracy)
    assert results["metrics"]["nll"] == pytest.approx(nll, rel=1e-5)
    assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-5 for r in rows)
    assert all(r["mutual_information"] >= 0 for r in rows)
    assert sum(r["mutual_information"] for r in rows) > 0  # S = 3 draws really differ
    assert (run / "evaluation" / "reliability.png").stat().st_size > 1000
    # another split of the recorded data, into another folder
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run),
                "--split",
                "validation",
                "--num-samples",
                "0",
                "--output",
                str(tmp_path / "val"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "val" / "metrics.json").read_text())["examples"] == 16

    texts = tmp_path / "new.txt"
    texts.write_text("a very good film\n\na dull boring plot\n")
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), "--input", str(texts), "--num-samples", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["text"] for line in lines] == ["a very good film", "a dull boring plot"]
    assert all(line["label"] in ("neg", "pos") and set(line["probabilities"]) == {"neg", "pos"} for line in lines)
    # a table file in, a JSONL file out (refused the second time without --overwrite)
    out = tmp_path / "predictions.jsonl"
    argv = [
        "predict",
        "--checkpoint",
        str(run),
        "--input",
        str(data_dir / "validation.csv"),
        "--output",
        str(out),
        "--num-samples",
        "0",
    ]
    assert main(argv) == 0
    assert len(out.read_text().splitlines()) == 16
    assert main(argv) == 2 and main(argv + ["--overwrite"]) == 0


def _stop_after_first_checkpoint(monkeypatch):
    """Interrupt the run right after its first checkpoint is complete (moved into place)."""
    import pyro_monteclora.storage.atomic as atomic

    original = atomic.replace_directory
    calls = []

    def replace_then_die(staging, target):
        original(staging, target)
        calls.append(target)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "replace_directory", replace_then_die)


def test_a_resumed_run_ends_with_the_parameters_of_an_uninterrupted_one(
    model_dir, data_dir, tmp_path, monkeypatch, capsys
):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ("--epochs", "3", "--lora-dropout", "0.1", "--eval-num-samples", "2")
    assert main(train_args(model_dir, data_dir, straight, *args)) == 0
    with monkeypatch.context() as patch:
        _stop_after_first_checkpoint(patch)
        assert main(train_args(model_dir, data_dir, resumed, *args)) == 130
    assert json.loads((resumed / "checkpoint" / "training_state.json").read_text())["epoch"] == 1
    assert not (resumed / "train_summary.json").exists()
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--output", str(resumed), "--resume"]) == 0
    a = load_file(str(straight / "checkpoint" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    first = json.loads((straight / "train_summary.json").read_text())
    second = json.loads((resumed / "train_summary.json").read_text())
    assert first["epochs"] == second["epochs"]  # losses and validation metrics of all 3 epochs
    # resuming a finished run changes nothing; a changed option is refused
    assert main(["train", "--output", str(resumed), "--resume", "--learning-rate", "0.5"]) == 2


@pytest.mark.parametrize("method, trained_fraction", [("lora", 0.2), ("full", 0.99)])
def test_baselines_train_and_evaluate(model_dir, data_dir, tmp_path, method, trained_fraction):
    run = tmp_path / method
    assert main(train_args(model_dir, data_dir, run, "--method", method, "--epochs", "1", "--no-validation")) == 0
    summary = json.loads((run / "train_summary.json").read_text())
    total = sum(p.numel() for p in tiny_bert_classifier().parameters())
    fraction = summary["trainable_parameters"] / total
    assert (fraction < trained_fraction) if method == "lora" else (fraction > trained_fraction)
    assert main(["evaluate", "--checkpoint", str(run)]) == 0
    results = json.loads((run / "evaluation" / "metrics.json").read_text())
    assert results["num_samples"] == 0 and results["method"] == method


def test_sentence_pairs_from_parquet(model_dir, tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    rows = sentences(16, 3)
    table = pyarrow.table(
        {
            "premise": [r["text"] for r in rows],
            "hypothesis": [r["text"].split()[-1] for r in rows],
            "gold": [int(r["label"] == "pos") for r in rows],
        }
    )
    parquet.write_table(table, tmp_path / "pairs.parquet")
    run = tmp_path / "pairs"
    assert (
        main(
            [
                "train",
                "--model",
                str(model_dir),
                "--train-file",
                str(tmp_path / "pairs.parquet"),
                "--test-file",
                str(tmp_path / "pairs.parquet"),
                "--text-column",
                "premise",
                "--text-column",
                "hypothesis",
                "--label-column",
                "gold",
                "--epochs",
                "1",
                "--max-length",
                "16",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    assert json.loads((run / "run.json").read_text())["data"]["label_names"] == ["0", "1"]
    assert main(["evaluate", "--checkpoint", str(run), "--num-samples", "1"]) == 0
    first = json.loads((run / "evaluation" / "predictions.jsonl").read_text().splitlines()[0])
    assert first["text_pair"] == rows[0]["text"].split()[-1]


def snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


def bad_inputs(model_dir, data_dir, tmp_path):
    """(name, argv) of bad command lines; each must exit 2 with one line and change nothing."""
    good = data_dir / "train.jsonl"
    empty_text = write_jsonl(tmp_path / "empty.jsonl", sentences(4, 0) + [{"text": " ", "label": "pos"}])
    strange_label = write_jsonl(tmp_path / "strange.jsonl", sentences(4, 0) + [{"text": "a film", "label": "meh"}])
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("text,label\ncaf\xe9 film,pos\n".encode("latin-1"))
    base = ["train", "--model", str(model_dir), "--output", str(tmp_path / "out")]
    return [
        ("missing file", base + ["--train-file", str(tmp_path / "nope.jsonl")]),
        ("missing column", base + ["--train-file", str(good), "--text-column", "review"]),
        ("label outside the set", base + ["--train-file", str(good), "--test-file", str(strange_label)]),
        ("empty text", base + ["--train-file", str(empty_text)]),
        ("not UTF-8", base + ["--train-file", str(latin1)]),
        ("unknown method", base + ["--train-file", str(good), "--method", "bayes"]),
        ("negative learning rate", base + ["--train-file", str(good), "--learning-rate", "-1"]),
        ("NaN sample scaler", base + ["--train-file", str(good), "--sample-scaler", "nan"]),
        ("rank 0", base + ["--train-file", str(good), "--rank", "0"]),
        ("targets match nothing", base + ["--train-file", str(good), "--target-modules", "q_proj"]),
        (
            "existing output",
            ["train", "--model", str(model_dir), "--train-file", str(good), "--output", str(tmp_path / "existing")],
        ),
        ("resume without a run", ["train", "--output", str(tmp_path / "existing"), "--resume"]),
        (
            "overwrite a foreign folder",
            [
                "train",
                "--model",
                str(model_dir),
                "--train-file",
                str(good),
                "--output",
                str(tmp_path / "existing"),
                "--overwrite",
            ],
        ),
        ("evaluate without checkpoint", ["evaluate", "--checkpoint", str(tmp_path / "existing")]),
        ("model folder without config", base + ["--train-file", str(good), "--model", str(tmp_path)]),
        ("two data sources", base + ["--train-file", str(good), "--task", "rotten-tomatoes"]),
        ("longer than the model's positions", base + ["--train-file", str(good), "--max-length", "100"]),
        ("output inside a file", base[:-1] + [str(data_dir / "train.jsonl" / "out"), "--train-file", str(good)]),
        ("evaluate with a bad bin count", ["evaluate", "--checkpoint", str(tmp_path), "--ece-bins", "0"]),
    ]


def test_console_script_runs_as_a_module(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pyro_monteclora", "train", "--method", "x", "--output", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "pyro-monteclora train: error: argument --method: invalid choice: 'x'"
    ), lines
    assert "monteclora" in lines[0] and "full" in lines[0]


def test_hub_dataset_reads_the_splits_it_has(model_dir, tmp_path, monkeypatch):
    """--dataset goes through datasets.load_dataset; here the hub is replaced by local rows."""
    import datasets

    import pyro_monteclora.data.hf_datasets as hub

    rows = {"train": sentences(16, 0), "test": sentences(8, 1)}  # no validation split
    calls = []

    def load(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(
            [{"sentence": r["text"], "label": int(r["label"] == "pos")} for r in rows[split]]
        )

    monkeypatch.setattr(hub, "hub_split_names", lambda name, config: {s: s for s in rows})
    monkeypatch.setattr(hub, "load_hub_table", load)
    run = tmp_path / "hub"
    assert (
        main(
            [
                "train",
                "--model",
                str(model_dir),
                "--dataset",
                "glue",
                "--dataset-config",
                "sst2",
                "--text-column",
                "sentence",
                "--epochs",
                "1",
                "--max-length",
                "16",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    assert calls == [("glue", "sst2", "train"), ("glue", "sst2", "test")]
    data = json.loads((run / "run.json").read_text())["data"]
    assert data["source"] == "dataset" and data["label_names"] == ["0", "1"]
    assert main(["evaluate", "--checkpoint", str(run), "--num-samples", "0"]) == 0
    assert calls[-1] == ("glue", "sst2", "test")  # evaluate re-reads the recorded test split


def test_resume_refuses_changed_data(model_dir, data_dir, tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text((data_dir / "train.jsonl").read_text())
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--model",
                str(model_dir),
                "--train-file",
                str(train),
                "--epochs",
                "1",
                "--max-length",
                "16",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    assert main(["train", "--output", str(run), "--resume"]) == 0  # unchanged: nothing to do
    write_jsonl(train, sentences(48, 7))
    assert main(["train", "--output", str(run), "--resume"]) == 2


def test_newly_initialised_weights_are_trained_and_saved(tmp_path, data_dir, model_dir):
    """A base saved without a pooler: the pooler is new, so it is trained and saved with the head."""
    folder = tmp_path / "no-pooler"
    tiny_bert_classifier().bert.__class__(tiny_bert_classifier().config, add_pooling_layer=False).save_pretrained(
        folder
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((model_dir / name).read_bytes())
    run = tmp_path / "run"
    assert main(train_args(folder, data_dir, run, "--epochs", "1", "--no-validation")) == 0
    saved = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert "network.bert.pooler.dense.weight" in saved and "network.classifier.weight" in saved


def test_a_diverging_run_stops_with_one_line_naming_the_step(model_dir, data_dir, tmp_path, capsys):
    status = main(
        train_args(model_dir, data_dir, tmp_path / "run", "--learning-rate", "1e30", "--epochs", "2", "--no-validation")
    )
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1
    assert err.startswith("pyro-monteclora train: error: fit(): the loss is nan at step"), err
    assert "checkpoint" in err


def test_sigkill_mid_run_then_resume_ends_like_an_uninterrupted_run(model_dir, data_dir, tmp_path):
    """A real ``kill -9`` of a training process after its first checkpoint, at whatever point of
    the next epoch (or checkpoint write) it has reached; the resumed run must end bit for bit where
    an uninterrupted run ends."""
    import signal
    import subprocess
    import sys
    import time

    args = ("--epochs", "20", "--lora-dropout", "0.1", "--eval-num-samples", "4")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(train_args(model_dir, data_dir, straight, *args)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # as this process
    process = subprocess.Popen(
        [sys.executable, "-m", "pyro_monteclora", *train_args(model_dir, data_dir, killed, *args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    state = killed / "checkpoint" / "training_state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if json.loads(state.read_text())["epoch"] >= 1:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    time.sleep(0.1)  # somewhere inside the next epoch
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=30) == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_at = json.loads(state.read_text())["epoch"]
    assert 1 <= stopped_at < 20
    assert main(["train", "--output", str(killed), "--resume"]) == 0
    a = load_file(str(straight / "checkpoint" / "model.safetensors"))
    b = load_file(str(killed / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [p.name for p in killed.iterdir() if p.name.startswith(".")] == []  # no staging left
