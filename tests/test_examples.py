"""Every script in examples/ runs in its fast mode, so no example rots."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.integration


def load(name):
    if str(EXAMPLES) not in sys.path:  # as `python examples/x.py` has it: example_support imports
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rotten_tomatoes_demo_fast(tmp_path):
    demo = load("rotten_tomatoes_demo")
    record = demo.main(["--fast", "--output", str(tmp_path)])
    assert set(record["models"]) == {"monteclora", "lora"}
    for name in ("report.md", "metrics.json", "reliability.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    for method in ("monteclora", "lora"):  # the two runs of the command line, kept for inspection
        assert (tmp_path / method / "checkpoint" / "model.safetensors").is_file()
        assert len((tmp_path / method / "evaluation" / "predictions.jsonl").read_text().splitlines()) == 48
    # running it again replaces the runs (they are its own) instead of refusing
    demo.main(["--fast", "--output", str(tmp_path), "--num-samples", "1"])
    assert json.loads((tmp_path / "metrics.json").read_text())["settings"]["num_samples"] == 1
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for model in metrics["models"].values():
        assert 0 <= model["accuracy"] <= 1 and 0 <= model["ece"] <= 1
    assert metrics["models"]["lora"]["mean_mutual_information"] == 0
    assert "| accuracy" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_rejects_bad_arguments(tmp_path, capsys):
    demo = load("rotten_tomatoes_demo")
    with pytest.raises(SystemExit) as raised:
        demo.main(["--learning-rate", "-1", "--output", str(tmp_path / "demo")])
    assert raised.value.code == 2
    assert "--learning-rate" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_trivia_generation_fast(tmp_path):
    example = load("trivia_generation")
    record = example.main(["--fast", "--output", str(tmp_path)])
    assert list(record["models"]) == ["pretrained (S=0)", "MonteCLoRA (S=0)", "MonteCLoRA (S=2)"]
    for name in ("report.md", "metrics.json", "reliability.png", "data/train.jsonl", "data/test.jsonl"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (tmp_path / "monteclora_S2.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(len(row["generations"]) == 2 for row in rows)
    sampled = record["models"]["MonteCLoRA (S=2)"]
    assert sampled["exact_match"] == sum(row["correct"] for row in rows) / 8
    assert sampled["mean_confidence"] == sum(row["agreement"] for row in rows) / 8
    # one greedy answer has confidence 1: its ECE is exactly 1 - exact match
    greedy = record["models"]["MonteCLoRA (S=0)"]
    assert greedy["mean_confidence"] == 1 and abs(greedy["ece"] - (1 - greedy["exact_match"])) < 1e-9


def test_hf_trainer_example_fast(tmp_path):
    example = load("hf_trainer")
    record = example.main(["--fast", "--output", str(tmp_path)])
    for key in ("test_accuracy", "test_nll", "test_ece", "test_brier", "test_mean_mutual_information"):
        assert key in record["test"], key
    assert 0 <= record["test"]["test_accuracy"] <= 1
    checkpoint = Path(record["best_checkpoint"])
    assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "training_state.json").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["provenance"]["commit"]
