"""``pyro-monteclora humaneval`` and ``generate_completions`` on a tiny Llama: posterior draws and
temperature sampling, the sandboxed scoring end to end, the output files, and bad input."""

import json

import pyro
import pytest
from conftest import word_tokenizer
from test_cli import snapshot, write_jsonl
from test_cli_decoders import decoder_dir, qa_dir, trained_run  # noqa: F401 (fixtures)

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.cli import main
from pyro_monteclora.evaluation.humaneval import generate_completions

# The tiny model writes words, never code: a completion after "#" is a comment (the problem passes
# whatever it wrote), after a wrong body it fails; so pass@1 is exactly 1/2.
PROBLEMS = [
    {
        "task_id": "tiny/0",
        "prompt": "def f():\n    return 1\n#",
        "test": "def check(g):\n    assert g() == 1\n",
        "entry_point": "f",
    },
    {
        "task_id": "tiny/1",
        "prompt": "def f():\n    return 2\n#",
        "test": "def check(g):\n    assert g() == 1\n",
        "entry_point": "f",
    },
]


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("problems") / "tiny.jsonl", PROBLEMS)


def humaneval_args(source, problems_file, output, *extra):
    return [
        "humaneval",
        *source,
        "--problems",
        str(problems_file),
        "--num-samples",
        "3",
        "--k",
        "1,2",
        "--max-new-tokens",
        "4",
        "--max-length",
        "32",
        "--cpu-seconds",
        "2",
        "--timeout",
        "5",
        "--prompt-style",
        "raw",
        "--device",
        "cpu",
        "--output",
        str(output),
        *extra,
    ]


def test_posterior_draws_score_end_to_end(trained_run, problems_file, tmp_path):  # noqa: F811
    output = tmp_path / "he"
    assert main(humaneval_args(["--checkpoint", str(trained_run)], problems_file, output)) == 0
    summary = json.loads((output / "humaneval.json").read_text())
    assert summary["settings"]["sampling"] == "posterior" and summary["num_samples"] == 3
    assert summary["pass_at_k"] == {"pass@1": 0.5, "pass@2": 0.5}
    assert summary["reasons"] == {"passed": 3, "failed: AssertionError": 3}
    rows = [json.loads(line) for line in (output / "problems.jsonl").read_text().splitlines()]
    assert [row["task_id"] for row in rows] == ["tiny/0", "tiny/1"]
    assert all(len(row["completions"]) == 3 for row in rows)
    assert (output / "pass_at_k.png").stat().st_size > 1000


def test_temperature_sampling_of_a_base_model(decoder_dir, problems_file, tmp_path):  # noqa: F811
    output = tmp_path / "base"
    argv = humaneval_args(["--model", str(decoder_dir)], problems_file, output, "--limit", "1")
    assert main(argv) == 0
    summary = json.loads((output / "humaneval.json").read_text())
    assert summary["settings"]["sampling"] == "temperature" and summary["num_problems"] == 1
    assert summary["pass_at_k"]["pass@1"] == 1.0


def test_posterior_completions_come_from_distinct_draws_and_temperature_from_the_mean():
    import torch
    from conftest import tiny_llama

    tokenizer = word_tokenizer()
    model = MonteCLoRAModel(
        tiny_llama(initializer_range=0.2), MonteCLoRAConfig(rank=4, target_modules=["q_proj"], sample_scaler=3.0)
    )
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)
    guide = MonteCLoRAGuide(model)
    prompts = ["what is the capital of peru ?", "capital ?"]
    pyro.set_rng_seed(0)
    drawn = generate_completions(model, guide, tokenizer, prompts, 4, max_new_tokens=5, samples_per_pass=3)
    assert [len(c) for c in drawn] == [4, 4]
    assert any(len(set(c)) > 1 for c in drawn)  # the draws differ
    greedy_mean = generate_completions(model, guide, tokenizer, prompts, 2, sampling="temperature", temperature=1e-4)
    assert all(len(set(c)) == 1 for c in greedy_mean)  # a tiny temperature is the mean adapter's greedy text
    chat = generate_completions(
        model, guide, word_tokenizer(chat_template=True), prompts, 2, prompt_style="chat", max_new_tokens=3
    )
    assert all(text.startswith("\n") and text.endswith("\n") for texts in chat for text in texts)
    with pytest.raises(ValueError, match="prompt_style must be one of raw, chat"):
        generate_completions(model, guide, tokenizer, prompts, 2, prompt_style="markdown")
    with pytest.raises(ValueError, match="sampling='posterior' needs a guide with a posterior"):
        generate_completions(model, None, tokenizer, prompts, 2)
    with pytest.raises(ValueError, match="sampling must be one of posterior, temperature"):
        generate_completions(model, guide, tokenizer, prompts, 2, sampling="beam")


def test_bad_input_is_one_line_exit_2_and_writes_nothing(trained_run, decoder_dir, problems_file, tmp_path, capsys):  # noqa: F811
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.json").write_text("{}")
    bad_problems = tmp_path / "bad.jsonl"
    bad_problems.write_text('{"task_id": "x"}\n')
    out = tmp_path / "out"
    run = ["--checkpoint", str(trained_run)]
    cases = [
        (humaneval_args(run, problems_file, out, "--k", "1,4"), "each k must be between 1 and --num-samples 3"),
        (
            humaneval_args(run, problems_file, out, "--cpu-seconds", "0"),
            "--cpu-seconds must be a positive, finite number",
        ),
        (humaneval_args(run, problems_file, out, "--timeout", "-1"), "--timeout must be a positive, finite number"),
        (humaneval_args(run, problems_file, out, "--cpu-seconds", "inf"), "--cpu-seconds must be a positive, finite"),
        (humaneval_args(run, problems_file, out, "--memory-mb", "0"), "--memory-mb must be"),
        (humaneval_args(run, problems_file, out, "--k", "one"), "--k 'one': comma-separated integers"),
        (humaneval_args(run, problems_file, taken), "is not empty; pass --overwrite"),
        (humaneval_args(run, bad_problems, out), "line 1: needs the string fields"),
        (
            humaneval_args(["--model", str(decoder_dir)], problems_file, out, "--sampling", "posterior"),
            "needs a MonteCLoRA",
        ),
        (humaneval_args([], problems_file, out), "give --checkpoint"),
    ]
    before = snapshot(tmp_path)
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert snapshot(tmp_path) == before, argv
