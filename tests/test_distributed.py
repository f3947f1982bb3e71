"""Multi-process training on PyTorch DDP with the gloo backend on the CPU: two processes under
torchrun end where one process ends over the same global batches, draw independent noise, and
the command line writes its run folder once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import VOCAB, tiny_bert_classifier
from safetensors.torch import load_file

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, fit

pytestmark = pytest.mark.integration
TESTS = Path(__file__).resolve().parent

SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import pyro, torch
import torch.distributed as dist
from safetensors.torch import save_file
from pyro_monteclora.distributed import init_distributed, world
from test_distributed import global_batches, make_model
from pyro_monteclora import fit

torch.set_num_threads(1)
assert init_distributed(torch.device("cpu"))
rank, size = world()
model, guide = make_model()
shard = [{{k: v[rank::size] for k, v in batch.items()}} for batch in global_batches()]
model.dataset_size = 32
fit(model, guide, shard, epochs=2, learning_rate=1e-2, seed=0, progress=False)
tensors = {{n: p.detach().clone() for n, p in model.trainable_parameters()}}
tensors.update({{"guide." + n: p.detach().clone() for n, p in guide.named_parameters()}})
gathered = [None] * size
dist.all_gather_object(gathered, tensors)
assert all(torch.equal(gathered[0][k], gathered[1][k]) for k in tensors), "ranks drifted apart"
draws = [None] * size
dist.all_gather_object(draws, torch.randn(4))  # the random streams after training
assert not torch.equal(draws[0], draws[1]), "the ranks share their noise"
if rank == 0:
    save_file(tensors, {out!r})
dist.barrier()  # no rank leaves while another still receives
# Every rank has synchronised and rank 0 has written its file. Leave without the interpreter's
# teardown: CI runs saw a rank abort there ("terminate called without an active exception", a
# gloo thread still joinable during static destruction) even after destroy_process_group().
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def make_model():
    import pyro

    pyro.set_rng_seed(0)
    model = MonteCLoRAModel(
        tiny_bert_classifier(), MonteCLoRAConfig(rank=4, sample_scaler=0.0, modules_to_save=["classifier"])
    )  # s = 0: the noise is controlled
    return model, MonteCLoRAGuide(model)


def global_batches():
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, VOCAB, (32, 8), generator=generator)
    labels = (ids[:, 0] > VOCAB // 2).long()
    return [
        {
            "input_ids": ids[i : i + 8],
            "attention_mask": torch.ones(8, 8, dtype=torch.long),
            "labels": labels[i : i + 8],
            "example_index": torch.arange(i, i + 8),
        }
        for i in range(0, 32, 8)
    ]


def torchrun(args, tmp_path, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYRO_MONTECLORA_TEST_THREADS="1")
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_two_gloo_processes_match_one_process_over_the_same_global_batches(tmp_path):
    out = tmp_path / "ddp.safetensors"
    script = tmp_path / "ddp_fit.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), out=str(out)))
    done = torchrun([str(script)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    model, guide = make_model()
    model.dataset_size = 32
    fit(model, guide, global_batches(), epochs=2, learning_rate=1e-2, seed=0, progress=False)
    ddp = load_file(str(out))
    single = {n: p.detach() for n, p in model.trainable_parameters()}
    single.update({"guide." + n: p.detach() for n, p in guide.named_parameters()})
    assert ddp.keys() == single.keys()
    moved = 0
    for name, value in single.items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-6, msg=name)
        moved += int(not torch.allclose(value, make_model_parameter(name)))
    assert moved > 0


def make_model_parameter(name):
    model, guide = make_model()
    named = dict(model.trainable_parameters())
    named.update({"guide." + n: p for n, p in guide.named_parameters()})
    return named[name].detach()


def test_the_command_line_under_torchrun_writes_its_run_once(tmp_path):
    import transformers
    from test_cli import WORDS, sentences, write_jsonl

    folder = tmp_path / "model"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    tiny_bert_classifier().save_pretrained(folder)
    train = write_jsonl(tmp_path / "train.jsonl", sentences(40, 0))
    valid = write_jsonl(tmp_path / "valid.jsonl", sentences(9, 1))
    run = tmp_path / "run"
    done = torchrun(
        [
            "-m",
            "pyro_monteclora",
            "train",
            "--model",
            str(folder),
            "--train-file",
            str(train),
            "--validation-file",
            str(valid),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--rank",
            "4",
            "--max-length",
            "16",
            "--learning-rate",
            "0.01",
            "--output",
            str(run),
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("wrote ") == 1 and "2 processes" in done.stderr
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2 * 5  # 20 examples per rank, batch 4
    assert {"accuracy", "nll"} <= set(summary["epochs"][-1])  # validation gathered from both ranks
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint", "run.json", "train_summary.json"]
    state = json.loads((run / "checkpoint" / "training_state.json").read_text())
    assert state["epoch"] == 2


def test_more_processes_than_examples_is_refused_before_any_process_group(tmp_path):
    """A classifier's training set has two labels, so at least two rows (one row is refused as one
    class): the validation set is where a launch can have more processes than examples."""
    from test_cli import sentences, write_jsonl

    train = write_jsonl(tmp_path / "train.jsonl", sentences(4, 0))
    valid = write_jsonl(tmp_path / "valid.jsonl", sentences(1, 1))
    done = torchrun(
        [
            "-m",
            "pyro_monteclora",
            "train",
            "--train-file",
            str(train),
            "--validation-file",
            str(valid),
            "--output",
            str(tmp_path / "run"),
        ],
        tmp_path,
        timeout=120,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("pyro-monteclora")]
    assert errors == [
        "pyro-monteclora train: error: WORLD_SIZE=2 processes for 1 validation examples: "
        "pass --no-validation or a larger validation set"
    ], done.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_inference_commands_refuse_a_multi_process_launch(monkeypatch, tmp_path, capsys):
    from pyro_monteclora.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    for command in (
        ["evaluate", "--checkpoint", str(tmp_path)],
        ["predict", "--checkpoint", str(tmp_path)],
        ["generate", "--model", str(tmp_path), "--prompt", "x"],
    ):
        assert main(command) == 2
        assert capsys.readouterr().err.strip() == (
            f"pyro-monteclora {command[0]}: error: {command[0]} runs in one process (only train is "
            f"multi-process); launch it without torchrun / accelerate"
        )
    monkeypatch.setenv("RANK", "1")  # the other ranks exit the same way, silently
    assert main(["evaluate", "--checkpoint", str(tmp_path)]) == 2 and capsys.readouterr().err == ""
