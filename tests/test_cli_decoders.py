"""The command line for decoders on a tiny random Llama saved to disk: train --task-type causal-lm,
evaluate (token NLL and --multiple-choice), generate, resume, and bad input (exit 2, nothing written)."""

import json

import pytest
import torch
from conftest import CAPITALS, capital_rows, sum_rows, tiny_llama, word_tokenizer
from test_cli import _stop_after_first_checkpoint, snapshot, write_jsonl

from pyro_monteclora.cli import main


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    word_tokenizer(chat_template=True).save_pretrained(folder)
    network = tiny_llama(initializer_range=0.2)
    network.config.pad_token_id = 0
    network.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    rows = capital_rows()
    write_jsonl(folder / "train.jsonl", rows * 2)
    write_jsonl(folder / "test.jsonl", [dict(r, answers=[r["answer"], r["answer"].upper()]) for r in rows])
    write_jsonl(
        folder / "mc.jsonl",
        [
            {
                "question": r["question"],
                "choices": [r["answer"], CAPITALS[(i + 1) % 8], CAPITALS[(i + 2) % 8]],
                "answer": "A",
            }
            for i, r in enumerate(rows)
        ],
    )
    return folder


@pytest.fixture(scope="module")
def trained_run(decoder_dir, qa_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("runs") / "qa"
    status = main(train_args(decoder_dir, qa_dir, output))
    assert status == 0
    return output


def train_args(decoder_dir, qa_dir, output, *extra):
    return [
        "train",
        "--task-type",
        "causal-lm",
        "--model",
        str(decoder_dir),
        "--train-file",
        str(qa_dir / "train.jsonl"),
        "--validation-file",
        str(qa_dir / "test.jsonl"),
        "--rank",
        "4",
        "--target-modules",
        "q_proj,v_proj",
        "--batch-size",
        "4",
        "--epochs",
        "4",
        "--learning-rate",
        "0.02",
        "--sample-scaler",
        "0.05",
        "--max-length",
        "32",
        "--output",
        str(output),
        *extra,
    ]


def test_train_records_a_decoder_run_whose_validation_nll_falls(trained_run):
    summary = json.loads((trained_run / "train_summary.json").read_text())
    nll = [epoch["token_nll"] for epoch in summary["epochs"]]
    assert len(nll) == 4 and nll[-1] < nll[0]
    saved = json.loads((trained_run / "checkpoint" / "monteclora_config.json").read_text())
    assert saved["likelihood"] == "causal-lm" and saved["guide"]["class"] == "MonteCLoRAGuide"
    run = json.loads((trained_run / "run.json").read_text())
    assert run["data"]["task_type"] == "causal-lm" and run["arguments"]["task_type"] == "causal-lm"


def test_evaluate_token_nll_and_multiple_choice(trained_run, qa_dir, tmp_path, capsys):
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(trained_run),
                "--num-samples",
                "2",
                "--test-file",
                str(qa_dir / "test.jsonl"),
                "--output",
                str(tmp_path / "nll"),
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "nll" / "metrics.json").read_text())
    assert metrics["examples"] == 8 and metrics["metrics"]["tokens"] == 16
    assert metrics["metrics"]["perplexity"] == pytest.approx(2.718281828 ** metrics["metrics"]["token_nll"])
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(trained_run),
                "--multiple-choice",
                "--test-file",
                str(qa_dir / "mc.jsonl"),
                "--num-samples",
                "3",
                "--output",
                str(tmp_path / "mc"),
            ]
        )
        == 0
    )
    result = json.loads((tmp_path / "mc" / "metrics.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "mc" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and (tmp_path / "mc" / "reliability.png").stat().st_size > 1000
    assert result["metrics"]["accuracy"] == pytest.approx(sum(r["correct"] for r in rows) / 8)
    probs = torch.tensor([r["probabilities"] for r in rows])
    torch.testing.assert_close(probs.sum(-1), torch.ones(8))
    nll = -torch.tensor([r["probabilities"][r["answer"]] for r in rows]).log().mean().item()
    assert result["metrics"]["nll"] == pytest.approx(nll, rel=1e-4)
    assert result["num_samples"] == 3


def test_generate_writes_one_line_per_prompt_and_calibration_metrics(trained_run, qa_dir, tmp_path):
    out, metrics = tmp_path / "gen.jsonl", tmp_path / "gen.json"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(trained_run),
                "--prompt-file",
                str(qa_dir / "test.jsonl"),
                "--num-samples",
                "3",
                "--max-new-tokens",
                "3",
                "--output",
                str(out),
                "--metrics",
                str(metrics),
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and all(len(r["generations"]) == 3 and r["num_samples"] == 3 for r in rows)
    summary = json.loads(metrics.read_text())["metrics"]
    assert summary["exact_match"] == pytest.approx(sum(r["correct"] for r in rows) / 8)
    assert summary["mean_confidence"] == pytest.approx(sum(r["agreement"] for r in rows) / 8)
    for row in rows:
        votes = row["answers"].count(row["answer"]) if row["answer"] is not None else 0
        assert row["agreement"] == pytest.approx(votes / 3)


def test_generate_from_the_command_line_and_from_a_base_model(trained_run, decoder_dir, capsys):
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(trained_run),
                "--prompt",
                "what is the capital of peru ?",
                "--prompt",
                "what is the capital of chile ?",
                "--num-samples",
                "0",
                "--max-new-tokens",
                "2",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [len(line["generations"]) for line in lines] == [1, 1] and lines[0]["references"] is None
    assert main(["generate", "--model", str(decoder_dir), "--prompt", "capital ?", "--max-new-tokens", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["num_samples"] == 0


def test_a_resumed_decoder_run_ends_where_an_uninterrupted_one_ends(decoder_dir, qa_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    args = ("--epochs", "2", "--eval-num-samples", "2")
    assert main(train_args(decoder_dir, qa_dir, straight, *args)) == 0
    with monkeypatch.context() as patch:
        _stop_after_first_checkpoint(patch)
        assert main(train_args(decoder_dir, qa_dir, resumed, *args)) == 130
    assert main(["train", "--output", str(resumed), "--resume"]) == 0
    a = load_file(str(straight / "checkpoint" / "model.safetensors"))
    b = load_file(str(resumed / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    epochs = [json.loads((run / "train_summary.json").read_text())["epochs"] for run in (straight, resumed)]
    assert epochs[0] == epochs[1]


def bad_decoder_inputs(decoder_dir, qa_dir, trained_run, tmp_path):
    no_response = write_jsonl(tmp_path / "noresp.jsonl", [{"question": "a", "answer": "b"}, {"question": "c"}])
    bad_letter = write_jsonl(
        tmp_path / "badmc.jsonl",
        [
            {"question": "q", "choices": ["x", "y"], "answer": "B"},
            {"question": "q", "choices": ["x", "y"], "answer": "C"},
        ],
    )
    base = ["train", "--task-type", "causal-lm", "--model", str(decoder_dir), "--output", str(tmp_path / "out")]
    train = str(qa_dir / "train.jsonl")
    return [
        (
            "a record without its response",
            base + ["--train-file", str(no_response)],
            r"noresp\.jsonl line 2: no 'answer' field \(the response\)",
        ),
        (
            "a built-in classification task",
            base + ["--task", "rotten-tomatoes"],
            r"--task rotten-tomatoes is a classification task",
        ),
        (
            "classification columns",
            base + ["--train-file", train, "--text-column", "x"],
            r"--text-column/--label-column apply to classification data",
        ),
        (
            "prompt column on a classifier",
            ["train", "--prompt-column", "q", "--train-file", train, "--output", str(tmp_path / "out")],
            r"--prompt-column/--response-column apply to causal-lm data only",
        ),
        ("no data", base, r"no data: pass --train-file"),
        (
            "a letter outside the choices",
            [
                "evaluate",
                "--checkpoint",
                str(trained_run),
                "--multiple-choice",
                "--test-file",
                str(bad_letter),
                "--output",
                str(tmp_path / "out"),
            ],
            r"badmc\.jsonl line 2: answer 'C' is not one of the 2 choices; use an index 0\.\.1, a letter A\.\.B",
        ),
        (
            "both prompt sources",
            ["generate", "--checkpoint", str(trained_run), "--prompt", "x", "--prompt-file", train],
            r"--prompt TEXT .* or --prompt-file FILE, not both",
        ),
        (
            "samples from a bare base",
            ["generate", "--model", str(decoder_dir), "--prompt", "x", "--num-samples", "2"],
            r"--num-samples > 0 needs a MonteCLoRA --checkpoint",
        ),
        (
            "metrics without references",
            ["generate", "--checkpoint", str(trained_run), "--prompt", "x", "--metrics", str(tmp_path / "m.json")],
            r"--metrics needs a reference answer",
        ),
        (
            "an existing output file",
            ["generate", "--checkpoint", str(trained_run), "--prompt", "x", "--output", train],
            r"already exists; pass --overwrite",
        ),
        (
            "max length below the new tokens",
            [
                "generate",
                "--checkpoint",
                str(trained_run),
                "--prompt",
                "x",
                "--max-new-tokens",
                "8",
                "--max-length",
                "8",
            ],
            r"--max-length must be an integer >= 9",
        ),
        (
            "a missing gguf file",
            base + ["--train-file", train, "--model", str(tmp_path / "m.gguf")],
            r"--model .*m\.gguf: no GGUF file",
        ),
        (
            "fp16 on the CPU",
            base + ["--train-file", train, "--device", "cpu", "--dtype", "fp16"],
            r"--dtype fp16: dtype fp16 needs a CUDA device",
        ),
        (
            "an unknown dtype",
            base + ["--train-file", train, "--dtype", "fp8"],
            r"argument --dtype: invalid choice: 'fp8' \(choose from '?fp32'?, '?bf16'?, '?fp16'?\)",
        ),
        (
            "fp16 generation on the CPU",
            ["generate", "--checkpoint", str(trained_run), "--prompt", "x", "--device", "cpu", "--dtype", "fp16"],
            r"dtype fp16 needs a CUDA device",
        ),
    ] + (
        []
        if torch.cuda.is_available()
        else [
            (
                "cuda without CUDA",
                base + ["--train-file", train, "--device", "cuda"],
                r"--device cuda: CUDA is not available on this machine",
            ),
        ]
    )


def test_bad_decoder_input_exits_2_with_one_line_and_writes_nothing(decoder_dir, qa_dir, trained_run, tmp_path, capsys):
    cases = bad_decoder_inputs(decoder_dir, qa_dir, trained_run, tmp_path)
    before, run_before = snapshot(tmp_path), snapshot(trained_run)
    for name, argv, pattern in cases:
        status = main(argv)
        err = capsys.readouterr().err.strip()
        assert status == 2, (name, err)
        assert err.startswith("pyro-monteclora") and "\n" not in err, (name, err)
        assert __import__("re").search(pattern, err), (name, err)
        assert snapshot(tmp_path) == before and snapshot(trained_run) == run_before, name


def test_a_classifier_checkpoint_is_refused_by_generate_and_multiple_choice(tmp_path, capsys):
    from conftest import tiny_bert_classifier

    from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel

    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4))
    model.save_pretrained(tmp_path / "clf", guide=MonteCLoRAGuide(model))
    assert main(["generate", "--checkpoint", str(tmp_path / "clf"), "--prompt", "x"]) == 2
    assert "a sequence-classification model; this command takes causal-lm models" in capsys.readouterr().err


def test_gsm8k_schema_from_the_hub_and_final_number_answers(decoder_dir, tmp_path, monkeypatch):
    """--dataset goes through datasets.load_dataset (replaced here by local rows); generate
    scores the final number of the worked answers."""
    import datasets

    import pyro_monteclora.data.hf_datasets as datafiles
    from pyro_monteclora.evaluation.generation import final_number

    rows = {"train": sum_rows(16, 0), "test": sum_rows(6, 1)}
    calls = []

    def load(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(rows[split])

    monkeypatch.setattr(datafiles, "hub_split_names", lambda name, config: {s: s for s in rows})
    monkeypatch.setattr(datafiles, "load_hub_table", load)
    run = tmp_path / "gsm"
    assert (
        main(
            [
                "train",
                "--task-type",
                "causal-lm",
                "--model",
                str(decoder_dir),
                "--dataset",
                "gsm8k",
                "--dataset-config",
                "main",
                "--epochs",
                "1",
                "--batch-size",
                "4",
                "--rank",
                "4",
                "--target-modules",
                "q_proj",
                "--max-length",
                "40",
                "--output",
                str(run),
            ]
        )
        == 0
    )
    assert calls == [("gsm8k", "main", "train"), ("gsm8k", "main", "test")]
    assert main(["evaluate", "--checkpoint", str(run), "--num-samples", "0", "--output", str(tmp_path / "ev")]) == 0
    assert calls[-1] == ("gsm8k", "main", "test")  # evaluate re-reads the recorded test split
    prompts = write_jsonl(tmp_path / "test.jsonl", rows["test"])
    out = tmp_path / "gen.jsonl"
    assert (
        main(
            [
                "generate",
                "--checkpoint",
                str(run),
                "--prompt-file",
                str(prompts),
                "--answer-type",
                "number",
                "--num-samples",
                "2",
                "--max-new-tokens",
                "6",
                "--output",
                str(out),
                "--metrics",
                str(tmp_path / "gen.json"),
            ]
        )
        == 0
    )
    for line in out.read_text().splitlines():
        row = json.loads(line)
        assert all(answer is None or answer.lstrip("-").replace(".", "").isdigit() for answer in row["answers"])
        assert row["correct"] == (row["answer"] is not None and row["answer"] == final_number(row["references"][0]))


def test_bf16_and_gradient_checkpointing_on_the_command_line(decoder_dir, qa_dir, tmp_path):
    from safetensors.torch import load_file

    run = tmp_path / "bf16"
    assert (
        main(train_args(decoder_dir, qa_dir, run, "--epochs", "1", "--dtype", "bf16", "--gradient-checkpointing")) == 0
    )
    saved = load_file(str(run / "checkpoint" / "model.safetensors"))
    assert saved and all(t.dtype == torch.float32 for t in saved.values())  # adapters and guide stay fp32
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(run),
                "--dtype",
                "bf16",
                "--num-samples",
                "2",
                "--test-file",
                str(qa_dir / "test.jsonl"),
                "--output",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]["tokens"] == 16


def test_multi_process_launches_that_cannot_work_are_refused_before_any_group(
    trained_run, decoder_dir, qa_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    before = snapshot(trained_run)
    assert main(["train", "--output", str(trained_run), "--resume"]) == 2
    assert (
        "the run was trained by 1 process(es); resume it with the same number (this launch has 2)"
        in capsys.readouterr().err
    )
    one = write_jsonl(tmp_path / "one.jsonl", capital_rows()[:1])
    assert (
        main(
            [
                "train",
                "--task-type",
                "causal-lm",
                "--model",
                str(decoder_dir),
                "--train-file",
                str(qa_dir / "train.jsonl"),
                "--validation-file",
                str(one),
                "--max-length",
                "32",
                "--output",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "WORLD_SIZE=2 processes for 1 validation examples" in capsys.readouterr().err
    assert snapshot(trained_run) == before and not (tmp_path / "x").exists()


def test_an_encoder_is_not_trained_as_a_causal_lm():
    import transformers

    from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAModel

    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    with pytest.raises(
        ValueError,
        match=r"needs a decoder; BertLMHeadModel over a bert config with "
        r"is_decoder=False attends to future tokens",
    ):
        MonteCLoRAModel(transformers.BertLMHeadModel(config), MonteCLoRAConfig(rank=2))
    config.is_decoder = True  # a BERT made causal on purpose is accepted
    MonteCLoRAModel(transformers.BertLMHeadModel(config), MonteCLoRAConfig(rank=2))
