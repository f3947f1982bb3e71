"""``train --quantize 4bit|8bit`` on the tiny Llama and the tiny BERT saved to disk: the run and the
checkpoint record the quantisation, ``evaluate``, ``predict`` and ``generate`` rebuild it, and bad
input (full fine-tuning, no bitsandbytes, a device it cannot run on) exits 2 with one line and
writes nothing."""

import json

import pytest
import transformers
from conftest import tiny_bert_classifier, tiny_llama, word_tokenizer
from test_cli import WORDS, data_dir, snapshot  # noqa: F401 (module fixture)
from test_cli import train_args as classifier_args
from test_cli_decoders import qa_dir  # noqa: F401 (module fixture)
from test_cli_decoders import train_args as decoder_args

import pyro_monteclora.quantization as quantization_module
from pyro_monteclora.cli import main
from pyro_monteclora.quantization import Quantization
from pyro_monteclora.quantization import is_quantized_linear as is_quantized

pytest.importorskip("bitsandbytes")
HIDDEN = 64  # bitsandbytes quantises 4-bit weights in blocks of 64


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama-64")
    word_tokenizer(chat_template=True).save_pretrained(folder)
    network = tiny_llama(initializer_range=0.2, hidden_size=HIDDEN)
    network.config.pad_token_id = 0
    network.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert-64")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    transformers.BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    tiny_bert_classifier(hidden_size=HIDDEN).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def decoder_run(decoder_dir, qa_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("quantized-runs") / "decoder-4bit"
    assert main(decoder_args(decoder_dir, qa_dir, output, "--quantize", "4bit", "--epochs", "2")) == 0
    return output


def recorded_quantization(run):
    record = json.loads((run / "checkpoint" / "monteclora_config.json").read_text())
    return Quantization.from_dict(record["base_model"]["quantization"])


def test_a_4bit_decoder_run_records_its_quantisation_and_generate_and_evaluate_rebuild_it(
    decoder_run, qa_dir, tmp_path, capsys
):
    assert json.loads((decoder_run / "run.json").read_text())["arguments"]["quantize"] == "4bit"
    quantization = recorded_quantization(decoder_run)
    assert (quantization.bits, quantization.quant_type, quantization.double_quant) == (4, "nf4", True)
    out = tmp_path / "generations.jsonl"
    argv = ["generate", "--checkpoint", str(decoder_run), "--prompt-file", str(qa_dir / "test.jsonl")]
    assert main([*argv, "--num-samples", "3", "--max-new-tokens", "3", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 and all(len(row["generations"]) == 3 for row in rows)
    argv = ["evaluate", "--checkpoint", str(decoder_run), "--test-file", str(qa_dir / "test.jsonl")]
    assert main([*argv, "--num-samples", "2", "--output", str(tmp_path / "nll")]) == 0
    metrics = json.loads((tmp_path / "nll" / "metrics.json").read_text())["metrics"]
    assert metrics["tokens"] == 16 and metrics["token_nll"] > 0


def test_an_8bit_classifier_run_trains_its_fp32_head_and_predict_rebuilds_the_base(
    classifier_dir, data_dir, tmp_path, capsys
):
    run = tmp_path / "classifier-8bit"
    assert main(classifier_args(classifier_dir, data_dir, run, "--quantize", "8bit")) == 0
    assert "base quantised 8bit (int8)" in capsys.readouterr().err
    assert recorded_quantization(run).bits == 8
    record = json.loads((run / "checkpoint" / "monteclora_config.json").read_text())
    assert "network.classifier.weight" in record["tensors"]  # the head is trained in full precision
    output = tmp_path / "predictions.jsonl"
    argv = ["predict", "--checkpoint", str(run), "--input", str(data_dir / "test.jsonl")]
    assert main([*argv, "--num-samples", "3", "--output", str(output)]) == 0
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 24 and all(abs(sum(row["probabilities"].values()) - 1) < 1e-4 for row in rows)


def test_modules_to_save_stay_in_full_precision_and_everything_else_is_quantised(classifier_dir, data_dir, tmp_path):
    from pyro_monteclora import load_pretrained
    from pyro_monteclora.quantization import quantized_layer_names

    run = tmp_path / "classifier-pooler"
    argv = classifier_args(classifier_dir, data_dir, run, "--quantize", "4bit", "--modules-to-save", "pooler")
    assert main([*argv, "--epochs", "1"]) == 0
    assert "pooler" in recorded_quantization(run).skip_modules
    model, _ = load_pretrained(run / "checkpoint")
    quantized = quantized_layer_names(model.network)
    # 2 blocks x (query, key, value, attention output, intermediate, output): 12; pooler and head fp32
    assert len(quantized) == 12 and not any("pooler" in path or "classifier" in path for path in quantized)
    assert (
        "network.bert.pooler.dense.weight"
        in json.loads((run / "checkpoint" / "monteclora_config.json").read_text())["tensors"]
    )


def test_bad_quantisation_input_exits_2_with_one_line_and_writes_nothing(
    decoder_dir, qa_dir, decoder_run, tmp_path, monkeypatch, capsys
):
    def refused(argv, pattern):
        before, run_before = snapshot(tmp_path), snapshot(decoder_run)
        status = main(argv)
        err = capsys.readouterr().err.strip()
        assert status == 2, err
        assert err.startswith("pyro-monteclora") and "\n" not in err, err
        assert __import__("re").search(pattern, err), err
        assert snapshot(tmp_path) == before and snapshot(decoder_run) == run_before

    output = tmp_path / "run"
    refused(
        decoder_args(decoder_dir, qa_dir, output, "--quantize", "4bit", "--method", "full"),
        r"--quantize 4bit freezes the base in 4 bits, and --method full trains every weight",
    )
    refused(decoder_args(decoder_dir, qa_dir, output, "--quantize", "2bit"), r"invalid choice: '2bit'")
    refused(
        decoder_args(decoder_dir, qa_dir, output, "--quantize", "8bit", "--method", "laplace"),
        r"--quantize 8bit with --method laplace: laplace-torch's Jacobians",
    )
    refused(
        decoder_args(decoder_dir, qa_dir, output, "--method", "blob", "--site-layout", "stacked"),
        r"--site-layout stacked covers the wishart-mixture prior's sites; --method blob",
    )
    # --dtype is not a run option, but it sets the 4-bit compute dtype: a resume must keep it
    refused(
        decoder_args(
            decoder_dir, qa_dir, decoder_run, "--quantize", "4bit", "--epochs", "2", "--resume", "--dtype", "bf16"
        ),
        r"--resume: the run's 4bit base computes in float32; resume it with --dtype fp32",
    )
    evaluate = ["evaluate", "--checkpoint", str(decoder_run), "--test-file", str(qa_dir / "test.jsonl")]
    evaluate += ["--output", str(tmp_path / "nll")]
    # a device bitsandbytes cannot run this quantisation on
    monkeypatch.setattr(quantization_module, "_DEVICE_CHECKS", {})
    monkeypatch.setattr(quantization_module, "_try_device", lambda *args: "NotImplementedError: no 4-bit kernel")
    refused(
        decoder_args(decoder_dir, qa_dir, output, "--quantize", "4bit"),
        r"--quantize 4bit: bitsandbytes .* cannot run a 4bit \(nf4\) base on cpu: NotImplementedError",
    )
    refused(evaluate, r"--checkpoint .*: its base is quantised: bitsandbytes .* cannot run a 4bit \(nf4\) base on cpu")
    # bitsandbytes not installed: the message names the extra
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    refused(
        decoder_args(decoder_dir, qa_dir, output, "--quantize", "8bit"),
        r"--quantize 8bit: a quantised base needs bitsandbytes, which is not installed: "
        r'pip install "pyro-monteclora\[quantize\]"',
    )
    refused(evaluate, r"its base is quantised: a quantised base needs bitsandbytes.*\[quantize\]")


def test_modules_the_checkpoint_lacks_are_loaded_in_full_precision_and_trained(classifier_dir, data_dir, tmp_path):
    """A base whose file lacks a module (DeBERTa's pooler, here BERT's with its weights removed):
    from_pretrained initialises it afresh, so it is trained with the head and must not be quantised."""
    import shutil

    from safetensors.torch import load_file, save_file

    from pyro_monteclora import load_pretrained
    from pyro_monteclora.quantization import quantized_layer_names

    base = tmp_path / "no-pooler"
    shutil.copytree(classifier_dir, base)
    tensors = {k: v for k, v in load_file(base / "model.safetensors").items() if "pooler" not in k}
    save_file(tensors, base / "model.safetensors", metadata={"format": "pt"})
    run = tmp_path / "run"
    assert main([*classifier_args(base, data_dir, run, "--quantize", "8bit"), "--epochs", "1"]) == 0
    model, _ = load_pretrained(run / "checkpoint")
    assert len(quantized_layer_names(model.network)) == 12 and not is_quantized(model.network.bert.pooler.dense)
    assert (
        "network.bert.pooler.dense.weight"
        in json.loads((run / "checkpoint" / "monteclora_config.json").read_text())["tensors"]
    )
