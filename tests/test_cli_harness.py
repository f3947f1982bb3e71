"""``pyro-monteclora lm-eval`` on a tiny Llama run: local tasks of each request type, the results
and generation files, and bad input (one line, exit 2, nothing written)."""

import json

import pytest
from conftest import CAPITALS, capital_rows, tiny_bert_classifier
from test_cli import snapshot
from test_cli_decoders import decoder_dir, qa_dir, trained_run  # noqa: F401 (fixtures)
from test_harness import write_local_tasks

pytest.importorskip("lm_eval")
from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAModel, save_pretrained  # noqa: E402
from pyro_monteclora.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """A folder of lm-eval task YAMLs over a local JSONL file, one per request type."""
    folder = tmp_path_factory.mktemp("tasks")
    rows = [
        {"question": r["question"], "choices": [r["answer"], CAPITALS[(i + 1) % 8]], "answer": 0, "target": r["answer"]}
        for i, r in enumerate(capital_rows())
    ]
    write_local_tasks(folder, rows)
    return folder


def lm_eval_args(run, task_dir, output, *extra):
    return [
        "lm-eval",
        "--checkpoint",
        str(run),
        "--tasks",
        "capitals_mc,capitals_gen",
        "--include-path",
        str(task_dir),
        "--limit",
        "4",
        "--output",
        str(output),
        "--device",
        "cpu",
        *extra,
    ]


def test_lm_eval_writes_the_results_and_every_draw_of_every_generation(trained_run, task_dir, tmp_path, capsys):  # noqa: F811
    output, generations = tmp_path / "lm_eval.json", tmp_path / "generations.jsonl"
    argv = lm_eval_args(trained_run, task_dir, output, "--num-samples", "3", "--generations", str(generations))
    assert main(argv) == 0
    record = json.loads(output.read_text())
    assert record["num_samples"] == 3
    assert 0.0 <= record["results"]["capitals_mc"]["acc,none"] <= 1.0
    assert 0.0 <= record["results"]["capitals_gen"]["exact_match,none"] <= 1.0
    lines = [json.loads(line) for line in generations.read_text().splitlines()]
    assert len(lines) == 4 and all(len(line["generations"]) == 3 for line in lines)
    for line in lines:  # the agreement is the majority's share of the draws (0 when none answered)
        assert line["agreement"] == pytest.approx(line["answers"].count(line["answer"]) / 3 if line["answer"] else 0.0)
    assert "capitals_mc" in capsys.readouterr().err  # lm-eval's table


def test_the_same_seed_gives_the_same_results(trained_run, task_dir, tmp_path):  # noqa: F811
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    for output in (first, second):
        assert main(lm_eval_args(trained_run, task_dir, output, "--num-samples", "2", "--seed", "4")) == 0
    assert json.loads(first.read_text())["results"] == json.loads(second.read_text())["results"]


@pytest.fixture()
def classifier_checkpoint(tmp_path):
    model = MonteCLoRAModel(
        tiny_bert_classifier(), MonteCLoRAConfig(rank=2, target_modules=["query"], modules_to_save=["classifier"])
    )
    return save_pretrained(model, tmp_path / "classifier")


def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    trained_run,  # noqa: F811
    task_dir,
    classifier_checkpoint,
    tmp_path,
    capsys,
):
    existing = tmp_path / "existing.json"
    existing.write_text("{}")
    out = tmp_path / "out.json"
    cases = [
        (
            lm_eval_args(trained_run, task_dir, out, "--tasks", "capitals_mc,no_such_task"),
            "no_such_task is not an lm-eval task",
        ),
        (
            lm_eval_args(classifier_checkpoint, task_dir, out),
            "a sequence-classification model; this command takes causal-lm",
        ),
        (lm_eval_args(trained_run, task_dir, out, "--batch-size", "0"), "--batch-size must be"),
        (lm_eval_args(trained_run, task_dir, out, "--num-samples", "-1"), "--num-samples must be"),
        (lm_eval_args(trained_run, task_dir, out, "--max-length", "4", "--max-gen-toks", "8"), "--max-length must be"),
        (lm_eval_args(trained_run, task_dir, existing), "already exists; pass --overwrite"),
        (lm_eval_args(trained_run, tmp_path / "missing", out), "--include-path"),
        (lm_eval_args(trained_run, task_dir, out, "--generations", str(out)), "--generations"),
    ]
    before = snapshot(tmp_path)
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert snapshot(tmp_path) == before, argv
