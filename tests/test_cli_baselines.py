"""The calibration baselines through the command line: train, calibrate, ensemble, evaluate, predict."""

import json

import pytest
import torch
from test_cli import _stop_after_first_checkpoint, data_dir, model_dir, snapshot, train_args  # noqa: F401

from pyro_monteclora.cli import main
from pyro_monteclora.data.classification import TextClassificationData, classification_loader
from pyro_monteclora.infer.predictive import predict
from pyro_monteclora.storage.checkpoint import load_pretrained, read_trained_tensors
from pyro_monteclora.storage.ensembles import read_ensemble_members


def evaluate(run, output, *extra):
    assert main(["evaluate", "--checkpoint", str(run), "--output", str(output), "--overwrite", *extra]) == 0
    return json.loads((output / "metrics.json").read_text())


def test_mc_dropout_with_a_temperature_fitted_on_validation(model_dir, data_dir, tmp_path):
    run = tmp_path / "mc"
    args = train_args(model_dir, data_dir, run, "--method", "mc-dropout", "--lora-dropout", "0.2", "--epochs", "2")
    assert main([*args, "--calibrate", "temperature"]) == 0
    calibration = json.loads((run / "checkpoint" / "calibration.json").read_text())
    assert calibration["fitted_on"] == "validation" and calibration["examples"] == 16
    assert calibration["num_samples"] == 10 and calibration["nll_after"] <= calibration["nll_before"]
    result = evaluate(run, tmp_path / "eval")
    assert result["method"] == "mc-dropout" and result["num_samples"] == 10
    assert result["temperature"] == pytest.approx(calibration["temperature"])
    raw = evaluate(run, tmp_path / "eval-raw", "--uncalibrated")
    assert raw["temperature"] is None
    assert raw["metrics"]["accuracy"] == result["metrics"]["accuracy"]  # a temperature keeps every argmax


def test_a_checkpoint_ensemble_of_one_is_the_last_checkpoint(model_dir, data_dir, tmp_path):
    run = tmp_path / "ckpt"
    args = train_args(model_dir, data_dir, run, "--method", "checkpoint-ensemble", "--epochs", "3")
    assert main([*args, "--ensemble-size", "1"]) == 0
    kind, details, members = read_ensemble_members(run / "checkpoint")
    assert kind == "checkpoint" and details == [{"epoch": 3}]
    last = read_trained_tensors(run / "checkpoint")
    assert all(torch.equal(members[0][name], last[name]) for name in last)
    ensemble = evaluate(run, tmp_path / "eval")
    model, guide = load_pretrained(run / "checkpoint")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(run / "checkpoint")
    records = [json.loads(line) for line in (data_dir / "test.jsonl").read_text().splitlines()]
    names = json.loads((run / "run.json").read_text())["data"]["label_names"]
    data = TextClassificationData([r["text"] for r in records], [names.index(r["label"]) for r in records], names)
    alone = predict(model, guide, classification_loader(data, tokenizer, 64, 16), num_samples=0)
    rows = [json.loads(line) for line in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert ensemble["metrics"]["accuracy"] == pytest.approx(float((alone.predictions == alone.labels).float().mean()))
    assert [row["probabilities"]["pos"] for row in rows] == pytest.approx(alone.probs[:, 1].tolist(), abs=1e-5)


def test_a_checkpoint_ensemble_keeps_the_last_k_epochs_across_a_resume(model_dir, data_dir, tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    extra = ("--method", "checkpoint-ensemble", "--ensemble-size", "2", "--epochs", "3")
    assert main(train_args(model_dir, data_dir, straight, *extra)) == 0
    with monkeypatch.context() as patch:
        _stop_after_first_checkpoint(patch)
        assert main(train_args(model_dir, data_dir, resumed, *extra)) == 130
    assert read_ensemble_members(resumed / "checkpoint")[1] == [{"epoch": 1}]
    assert main(["train", "--output", str(resumed), "--resume"]) == 0
    _, details, members = read_ensemble_members(straight / "checkpoint")
    _, details_resumed, members_resumed = read_ensemble_members(resumed / "checkpoint")
    assert details == details_resumed == [{"epoch": 2}, {"epoch": 3}]
    for a, b in zip(members, members_resumed):
        assert all(torch.equal(a[name], b[name]) for name in a)
    assert not all(torch.equal(members[0][k], members[1][k]) for k in members[0])
    result = evaluate(straight, tmp_path / "eval")
    assert result["metrics"]["mean_mutual_information"] > 0


def test_a_deep_ensemble_trains_its_members_and_resumes_the_missing_ones(model_dir, data_dir, tmp_path):
    run = tmp_path / "deep"
    args = train_args(model_dir, data_dir, run, "--method", "deep-ensemble", "--ensemble-size", "2", "--epochs", "1")
    assert main(args) == 0
    kind, details, members = read_ensemble_members(run / "checkpoint")
    assert kind == "deep" and details == [{"seed": 0}, {"seed": 1}]
    for index, member in enumerate(members):  # each member is its own LoRA run
        saved = read_trained_tensors(run / "members" / str(index) / "checkpoint")
        assert all(torch.equal(member[name], saved[name]) for name in saved)
    assert json.loads((run / "members" / "1" / "run.json").read_text())["arguments"]["seed"] == 1
    first = snapshot(run / "members" / "0")
    # lose the second member and the ensemble, then resume: member 0 is kept, member 1 retrained
    import shutil

    shutil.rmtree(run / "members" / "1")
    shutil.rmtree(run / "checkpoint")
    assert main([*args, "--resume"]) == 0
    assert snapshot(run / "members" / "0") == first
    _, _, again = read_ensemble_members(run / "checkpoint")
    assert all(torch.equal(again[1][name], members[1][name]) for name in members[1])
    result = evaluate(run, tmp_path / "eval")
    assert result["method"] == "deep-ensemble" and result["metrics"]["mean_mutual_information"] > 0


def test_the_ensemble_command_joins_runs_and_refuses_mixed_ones(model_dir, data_dir, tmp_path, capsys):
    runs = []
    for seed in (0, 1):
        run = tmp_path / f"lora{seed}"
        assert main(train_args(model_dir, data_dir, run, "--method", "lora", "--epochs", "1", "--seed", str(seed))) == 0
        runs.append(run)
    output = tmp_path / "ensemble"
    assert main(["ensemble", "--members", ",".join(map(str, runs)), "--output", str(output)]) == 0
    kind, details, _ = read_ensemble_members(output)
    assert kind == "deep" and [d["seed"] for d in details] == [0, 1]
    assert evaluate(output, tmp_path / "eval")["method"] == "deep-ensemble"
    # a member trained on another base (same architecture, other weights)
    import transformers
    from conftest import tiny_bert_classifier

    other_base = tmp_path / "other-base"
    tiny_bert_classifier(seed=5).save_pretrained(other_base)
    transformers.AutoTokenizer.from_pretrained(model_dir).save_pretrained(other_base)
    other = tmp_path / "other"
    assert main(train_args(other_base, data_dir, other, "--method", "lora", "--epochs", "1")) == 0
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["ensemble", "--members", f"{runs[0]},{other}", "--output", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differ in the base model" in err and not bad.exists()
    assert main(["ensemble", "--members", f"{runs[0]},{runs[0]}", "--output", str(bad)]) == 2
    assert "names one run twice" in capsys.readouterr().err and not bad.exists()


BAD = [
    ("--method mc-dropout without dropout", ["--method", "mc-dropout"], "--lora-dropout above 0"),
    ("an ensemble size below 1", ["--method", "deep-ensemble", "--ensemble-size", "0"], "--ensemble-size"),
    ("K above the epochs", ["--method", "checkpoint-ensemble", "--ensemble-size", "4", "--epochs", "2"], "--epochs 2"),
    ("--ensemble-size on lora", ["--method", "lora", "--ensemble-size", "2"], "applies to --method deep-ensemble"),
    ("--calibrate with no validation split", ["--calibrate", "temperature", "NO-VALIDATION"], "validation split"),
    ("an unknown calibration", ["--calibrate", "platt"], "--calibrate"),
    ("--calibrate when validation is what gets scored", ["--calibrate", "temperature", "NO-TEST"], "--test-file"),
    ("--calibrate on a causal LM", ["--calibrate", "temperature", "--task-type", "causal-lm"], "not causal-lm"),
]


@pytest.mark.parametrize("case,extra,message", BAD, ids=[b[0] for b in BAD])
def test_bad_baseline_options_exit_2_with_one_line_and_write_nothing(
    model_dir, data_dir, tmp_path, capsys, case, extra, message
):
    output = tmp_path / "run"
    argv = train_args(model_dir, data_dir, output, *[e for e in extra if e not in ("NO-VALIDATION", "NO-TEST")])
    for marker, option in (("NO-VALIDATION", "--validation-file"), ("NO-TEST", "--test-file")):
        if marker in extra:
            index = argv.index(option)
            del argv[index : index + 2]
    try:
        status = main(argv)
    except SystemExit as exit_:  # argparse's own refusal of a choice
        status = exit_.code
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) <= 2, err
    assert not output.exists()


def test_laplace_trains_lora_then_fits_and_evaluate_uses_its_predictive(model_dir, data_dir, tmp_path):
    pytest.importorskip("laplace")
    run = tmp_path / "laplace"
    assert main(train_args(model_dir, data_dir, run, "--method", "laplace", "--epochs", "1")) == 0
    meta = json.loads((run / "checkpoint" / "laplace.json").read_text())
    assert meta["prior_precision"]["method"] == "marglik"
    result = evaluate(run, tmp_path / "eval")
    assert result["method"] == "laplace" and result["metrics"]["mean_mutual_information"] > 0
    # Laplace + temperature afterwards: the Laplace fit is kept, the temperature added
    out = tmp_path / "tempered"
    assert main(["calibrate", "--checkpoint", str(run), "--temperature", "--output", str(out)]) == 0
    assert (out / "laplace.safetensors").is_file() and (out / "calibration.json").is_file()
    assert evaluate(out, tmp_path / "eval2")["temperature"] > 0


def test_calibrate_fits_laplace_and_a_temperature_into_a_new_checkpoint(model_dir, data_dir, tmp_path, capsys):
    pytest.importorskip("laplace")
    run = tmp_path / "lora"
    assert main(train_args(model_dir, data_dir, run, "--method", "lora", "--epochs", "1")) == 0
    before = snapshot(run)
    out = tmp_path / "calibrated"
    assert main(["calibrate", "--checkpoint", str(run), "--laplace", "--temperature", "--output", str(out)]) == 0
    assert snapshot(run) == before  # the source is left as it was
    assert (out / "laplace.safetensors").is_file() and not (out / "training_state.json").exists()
    assert json.loads((out / "calibration.json").read_text())["temperature"] > 0
    result = evaluate(out, tmp_path / "eval")
    assert result["method"] == "laplace" and result["temperature"] > 0
    capsys.readouterr()
    # Laplace of a checkpoint it does not apply to; no calibration asked; nothing written either time
    mc = tmp_path / "mc"
    assert main(train_args(model_dir, data_dir, mc, "--epochs", "1")) == 0
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["calibrate", "--checkpoint", str(mc), "--laplace", "--output", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "Laplace-LoRA applies to a LoRA checkpoint" in err and len(err.splitlines()) == 1 and not bad.exists()
    assert main(["calibrate", "--checkpoint", str(run), "--output", str(bad)]) == 2
    assert "needs --temperature, --laplace" in capsys.readouterr().err and not bad.exists()


def test_calibrate_refuses_a_temperature_without_a_validation_split(model_dir, data_dir, tmp_path, capsys):
    run = tmp_path / "lora"
    argv = train_args(model_dir, data_dir, run, "--method", "lora", "--epochs", "1")
    index = argv.index("--validation-file")
    del argv[index : index + 2]
    assert main(argv) == 0
    capsys.readouterr()
    bad = tmp_path / "bad"
    assert main(["calibrate", "--checkpoint", str(run), "--temperature", "--output", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "validation" in err and len(err.splitlines()) == 1 and not bad.exists()


def test_a_sweep_refuses_deep_ensembles_before_writing(model_dir, data_dir, tmp_path, capsys):
    output = tmp_path / "sweep"
    argv = ["sweep", "--methods", "lora,deep-ensemble", "--model", str(model_dir), "--output", str(output)]
    argv += ["--train-file", str(data_dir / "train.jsonl"), "--test-file", str(data_dir / "test.jsonl")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "deep-ensemble trains M runs per cell" in err and len(err.splitlines()) == 1
    assert not output.exists()
