"""Quantised bases (bitsandbytes 4-bit NF4 and LLM.int8, on the CPU): the layers multiply by the
de-quantised weight, within the stated rounding bound of the fp32 one; SVI trains the adapters and
guide only; the predictive and stacked generation run; checkpoints record the quantisation and
rebuild it; the PEFT export loads onto a quantised base; bad input is refused."""

import json

import pyro
import pytest
import torch
import transformers
from conftest import VOCAB, capital_rows, tiny_bert_classifier, tiny_llama, word_tokenizer

from pyro_monteclora import (
    MonteCLoRAConfig,
    MonteCLoRAGuide,
    MonteCLoRAModel,
    fit,
    load_pretrained,
    predict,
)
from pyro_monteclora.data.causal_lm import causal_lm_loader
from pyro_monteclora.data.instructions import InstructionData
from pyro_monteclora.evaluation.generation import generate_answers
from pyro_monteclora.nn.baselines import FullFineTuneModel
from pyro_monteclora.quantization import (
    Quantization,
    QuantizationError,
    check_quantization_device,
    dequantized_weight,
    describe_quantization,
    is_quantized_linear,
    quantized_layer_names,
    require_bitsandbytes,
)
from pyro_monteclora.storage.checkpoint import CONFIG_NAME, CheckpointError

pytest.importorskip("bitsandbytes")

BITS = ["4bit", "8bit"]
# 64 wide: bitsandbytes quantises 4-bit weights in blocks of 64
HIDDEN = 64


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """The tiny Llama and the tiny BERT classifier as folders, as a user's base would be."""
    root = tmp_path_factory.mktemp("bases")
    tiny_llama(initializer_range=0.2, hidden_size=HIDDEN).save_pretrained(root / "llama")
    tiny_bert_classifier(hidden_size=HIDDEN).save_pretrained(root / "bert")
    return root


def load(bases, kind: str, name: str = None):
    bert = kind == "bert"
    cls = transformers.AutoModelForSequenceClassification if bert else transformers.AutoModelForCausalLM
    kwargs = Quantization.from_name(name).from_pretrained_kwargs("cpu") if name else {}
    return cls.from_pretrained(bases / kind, **kwargs)


def llama_model(network, sample_scaler=0.5):
    model = MonteCLoRAModel(
        network, MonteCLoRAConfig(rank=4, target_modules=["q_proj", "v_proj"], sample_scaler=sample_scaler)
    )
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)
    return model


def bert_model(network):
    return MonteCLoRAModel(network, MonteCLoRAConfig(rank=4, sample_scaler=0.1, modules_to_save=["classifier"]))


def ids(seed=0, rows=4, length=8):
    return torch.randint(4, VOCAB, (rows, length), generator=torch.Generator().manual_seed(seed))


# -- the quantisation itself -------------------------------------------------------------------------
@pytest.mark.parametrize("name", BITS)
def test_the_quantised_weight_is_within_the_stated_rounding_bound(bases, name):
    """NF4: |W - deq(q(W))| <= 0.15190 a + |a' - a| for a the absmax of the weight's block of 64
    and a' its stored (double-quantised) value: half the widest gap between NF4's levels (-1 and
    -0.69619), plus the error of the block's scale. LLM.int8: <= (1/254 + 2^-11) times the row's
    absmax (it rounds the weight to fp16, then to 1/127 of the absmax)."""
    import bitsandbytes.functional as F

    fp32, quantised = load(bases, "llama"), load(bases, "llama", name)
    layers = quantized_layer_names(quantised)
    assert len(layers) == 14 and "lm_head" not in layers  # 7 linear layers a block; the head stays fp32
    tightest = 0.0
    for path in layers:
        weight = fp32.get_submodule(path).weight.detach()
        layer = quantised.get_submodule(path)
        error = (dequantized_weight(layer) - weight).abs()
        if name == "4bit":
            state = layer.weight.quant_state
            absmax = weight.reshape(-1, 64).abs().amax(-1, keepdim=True)
            stored = (F.dequantize_blockwise(state.absmax, state.state2) + state.offset).reshape(-1, 1)
            error, bound = error.reshape(-1, 64), 0.15190 * absmax + (stored - absmax).abs()
        else:
            bound = weight.abs().amax(-1, keepdim=True) * (1 / 254 + 2**-11)
        assert (error <= bound + 1e-6).all(), path
        tightest = max(tightest, float((error / bound).max()))
    assert tightest > 0.9  # the bound is the real one, not a loose one


@pytest.mark.parametrize("name", BITS)
def test_an_adapter_on_a_quantised_layer_computes_the_dequantised_weight_plus_the_fp32_update(bases, name):
    """The mean adapter's logits on the quantised base equal the same adapters on an fp32 base
    whose frozen weights are the de-quantised ones (NF4 to fp32 rounding; LLM.int8 also rounds the
    activations); against the original fp32 base, the adapters add little error of their own: the
    relative error of the adapted logits is at most 1.5 times the base's alone (measured on this
    random network, weights ~ N(0, 0.2): 4-bit 0.34 against 0.38; 8-bit 0.047 against 0.035, since
    LLM.int8 also rounds the activations, which the adapters change)."""
    quantised = llama_model(load(bases, "llama", name))
    reference = llama_model(load(bases, "llama"))
    dequantised = llama_model(load(bases, "llama"))
    originals = {path: adapter.base_layer.weight.detach().clone() for path, adapter in reference.adapters().items()}
    with torch.no_grad():
        for module_path in quantized_layer_names(quantised.network):
            target = dequantised.network.get_submodule(module_path)
            target.weight.copy_(dequantized_weight(quantised.network.get_submodule(module_path)))
        for adapted in (reference, dequantised):
            for path, adapter in adapted.adapters().items():
                source = quantised.adapters()[path]
                adapter.lora_A_mean.copy_(source.lora_A_mean)
                adapter.lora_B.copy_(source.lora_B)
        batch = ids()
        with quantised.mean_adapters(), reference.mean_adapters(), dequantised.mean_adapters():
            on_quantised = quantised.logits(input_ids=batch)
            on_dequantised = dequantised.logits(input_ids=batch)
            on_fp32 = reference.logits(input_ids=batch)
            for adapter in [*reference.adapters().values(), *quantised.adapters().values()]:
                adapter.lora_B.zero_()
            fp32_base, quantised_base = reference.logits(input_ids=batch), quantised.logits(input_ids=batch)
    if name == "4bit":  # NF4 de-quantises the weight and multiplies in fp32
        torch.testing.assert_close(on_quantised, on_dequantised, rtol=0, atol=1e-4)
    else:  # LLM.int8 also rounds each activation row to int8 (1/254 of its absmax)
        assert (on_quantised - on_dequantised).norm() < 0.1 * on_dequantised.norm()

    def relative(a, b):
        return float((a - b).norm() / b.norm())

    assert relative(on_quantised, on_fp32) <= 1.5 * relative(quantised_base, fp32_base)
    assert relative(on_fp32, fp32_base) > 0.5  # the adapters change the logits a lot
    assert all(torch.equal(originals[p], a.base_layer.weight) for p, a in reference.adapters().items())


def test_a_quantisation_record_round_trips_and_bad_fields_are_named():
    for name in BITS:
        quantization = Quantization.from_name(name, compute_dtype=torch.bfloat16, skip_modules=["mlp.down_proj"])
        assert Quantization.from_dict(json.loads(json.dumps(quantization.to_dict()))) == quantization
        assert quantization.skip_modules[:4] == ("lm_head", "pre_classifier", "classifier", "score")
    record = Quantization.from_name("4bit").to_dict()
    for field, value, pattern in [
        ("bits", 3, r"quantization\.bits must be one of 4, 8, got 3"),
        ("quant_type", "int8", r"quantization\.quant_type must be one of 'nf4', 'fp4'"),
        ("compute_dtype", "float64", r"quantization\.compute_dtype must be one of"),
        ("method", "gptq", r"quantization\.method must be one of 'bitsandbytes'"),
        ("threshold", -1, r"quantization\.threshold must be a finite number > 0"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            Quantization.from_dict(dict(record, **{field: value}))
    with pytest.raises(QuantizationError, match=r"quantize must be one of .4bit., .8bit., got .2bit."):
        Quantization.from_name("2bit")


def test_missing_bitsandbytes_and_a_device_that_cannot_run_it_are_refused(monkeypatch):
    with pytest.raises(QuantizationError, match=r"cannot run a 4bit \(nf4\) base on meta"):
        check_quantization_device(Quantization.from_name("4bit"), "meta")
    check_quantization_device(Quantization.from_name("8bit"), "cpu")  # runs here
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    with pytest.raises(QuantizationError, match=r'not installed: pip install "pyro-monteclora\[quantize\]"'):
        require_bitsandbytes()


def test_trained_modules_cannot_be_quantised_and_full_fine_tuning_refuses_a_quantised_base(bases):
    everything = transformers.BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=[])
    network = transformers.AutoModelForSequenceClassification.from_pretrained(
        bases / "bert", quantization_config=everything, device_map={"": "cpu"}
    )
    assert is_quantized_linear(network.classifier)
    with pytest.raises(
        ValueError,
        match=r"modules_to_save names classifier, which the base holds quantised.*"
        r"llm_int8_skip_modules=\[.classifier., ...\]",
    ):
        bert_model(network)
    with pytest.raises(ValueError, match=r"full fine-tuning updates every weight, and 13 layers"):
        FullFineTuneModel(load(bases, "bert", "4bit"))


# -- training and prediction -------------------------------------------------------------------------
@pytest.mark.parametrize("name", BITS)
def test_svi_trains_a_quantised_decoder_and_only_adapters_and_guide_get_gradients(bases, name):
    model = llama_model(load(bases, "llama", name))
    guide = MonteCLoRAGuide(model)
    rows = capital_rows()
    data = InstructionData([r["question"] for r in rows], [r["answer"] for r in rows])
    loader = causal_lm_loader(data, word_tokenizer(), batch_size=8, max_length=32)
    result = fit(model, guide, loader, epochs=40, learning_rate=3e-2, progress=False, seed=0)
    losses = [step["loss"] for step in result.steps]
    assert sum(losses[-5:]) / 5 < 0.85 * sum(losses[:5]) / 5
    trained = {name for name, _ in model.trainable_parameters()}
    assert trained == {f"{path}.{p}" for path in model.adapters() for p in ("lora_A_mean", "lora_B")}
    for path, parameter in model.network.named_parameters():
        assert (parameter.grad is not None) == (path in trained), path
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in guide.parameters())
    assert all(p.dtype == torch.float32 for p in guide.parameters())
    assert describe_quantization(model.network).name == name  # still quantised


@pytest.mark.parametrize("name", BITS)
def test_a_quantised_classifier_trains_its_fp32_head_and_predicts(bases, name):
    network = load(bases, "bert", name)
    assert not is_quantized_linear(network.classifier)  # heads are never quantised
    model = bert_model(network)
    guide = MonteCLoRAGuide(model)
    generator = torch.Generator().manual_seed(0)
    batch = torch.randint(1, VOCAB, (32, 8), generator=generator)
    labels = (batch[:, 0] > VOCAB // 2).long()
    data = [
        {"input_ids": rows, "attention_mask": torch.ones_like(rows), "labels": answers}
        for rows, answers in zip(batch.split(8), labels.split(8))
    ]
    model.dataset_size = 32
    result = fit(model, guide, data, epochs=15, learning_rate=2e-2, progress=False, seed=0)
    assert result.steps[-1]["loss"] < result.steps[0]["loss"]
    assert network.classifier.weight.grad is not None and network.classifier.weight.dtype == torch.float32
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in data]
    probabilities = predict(model, guide, unlabelled, num_samples=4).probs
    assert probabilities.shape == (32, 2)
    torch.testing.assert_close(probabilities.sum(-1), torch.ones(32))
    assert (probabilities.argmax(-1) == labels).float().mean() > 0.7


def test_stacked_generation_runs_on_a_4bit_decoder(bases):
    tokenizer = word_tokenizer()
    model = llama_model(load(bases, "llama", "4bit"), sample_scaler=2.0)
    guide = MonteCLoRAGuide(model)
    prompts = ["what is the capital of france ?", "what is the capital of peru ?"]
    pyro.set_rng_seed(1)
    together = generate_answers(model, guide, tokenizer, prompts, 3, max_new_tokens=4, answer_type="text")
    pyro.set_rng_seed(1)
    apart = generate_answers(
        model, guide, tokenizer, prompts, 3, max_new_tokens=4, answer_type="text", samples_per_pass=1
    )
    assert [r.generations for r in together] == [r.generations for r in apart]
    assert all(len(r.generations) == 3 for r in together)


# -- checkpoints and PEFT ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BITS)
def test_a_quantised_checkpoint_records_and_rebuilds_its_quantisation(bases, name, tmp_path):
    model = llama_model(load(bases, "llama", name))
    guide = MonteCLoRAGuide(model)
    model.save_pretrained(tmp_path, guide=guide)
    recorded = json.loads((tmp_path / CONFIG_NAME).read_text())["base_model"]["quantization"]
    assert Quantization.from_dict(recorded) == describe_quantization(model.network)
    loaded, loaded_guide = load_pretrained(tmp_path)  # the base from its recorded path, quantised again
    assert describe_quantization(loaded.network) == describe_quantization(model.network)
    assert describe_quantization(MonteCLoRAModel.from_pretrained(tmp_path).network).name == name
    batch = ids(2)
    with torch.no_grad(), model.mean_adapters(), loaded.mean_adapters():
        torch.testing.assert_close(loaded.logits(input_ids=batch), model.logits(input_ids=batch))
    for (n1, p1), (n2, p2) in zip(guide.named_parameters(), loaded_guide.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    # the same adapters onto the unquantised base: accepted (the fingerprint within the 4-bit bound)
    unquantised, _ = load_pretrained(tmp_path, base_model=load(bases, "llama"))
    assert describe_quantization(unquantised.network) is None
    # a recorded quantisation the device cannot run: one line naming the file
    record = json.loads((tmp_path / CONFIG_NAME).read_text())
    record["base_model"]["quantization"]["compute_dtype"] = "float64"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"base_model\.quantization\.compute_dtype must be one of"):
        load_pretrained(tmp_path)


def test_heavy_tailed_weights_pass_the_fp32_to_4bit_base_check(tmp_path):
    """The base check between an fp32 record and a 4-bit base reads the block's absmax: weights from
    a Student-t with 3 degrees of freedom (whose block scales double quantisation rounds most) pass
    for every seed, and another base of the same weights' scale does not."""
    for seed in range(6):
        network = tiny_llama(seed=seed, hidden_size=HIDDEN)
        with torch.no_grad():
            for module in network.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight.copy_(0.02 * torch.distributions.StudentT(3.0).sample(module.weight.shape))
        folder = tmp_path / f"t3-{seed}"
        network.save_pretrained(folder)
        model = llama_model(transformers.AutoModelForCausalLM.from_pretrained(folder))
        model.save_pretrained(folder / "adapters")
        load_pretrained(folder / "adapters", base_model=load(tmp_path, f"t3-{seed}", "4bit"))
    with pytest.raises(CheckpointError, match=r"other frozen weights"):
        load_pretrained(tmp_path / "t3-0" / "adapters", base_model=load(tmp_path, "t3-1", "4bit"))


def test_a_quantised_checkpoint_on_a_device_that_cannot_run_it_is_refused_naming_the_file(bases, tmp_path, monkeypatch):
    import pyro_monteclora.quantization as quantization_module

    model = llama_model(load(bases, "llama", "4bit"))
    model.save_pretrained(tmp_path)
    monkeypatch.setattr(quantization_module, "_DEVICE_CHECKS", {})
    monkeypatch.setattr(quantization_module, "_try_device", lambda *args: "RuntimeError: no kernel")
    with pytest.raises(
        CheckpointError, match=r"monteclora_config.json: the checkpoint's base is quantised: .*no kernel"
    ):
        load_pretrained(tmp_path)


def test_an_unquantised_checkpoint_is_refused_onto_another_base_even_quantised(bases, tmp_path):
    model = llama_model(load(bases, "llama"))
    model.save_pretrained(tmp_path)
    load_pretrained(tmp_path, base_model=load(bases, "llama", "4bit"))  # same weights, quantised: accepted
    other = tmp_path / "other"
    tiny_llama(seed=5, initializer_range=0.2, hidden_size=HIDDEN).save_pretrained(other)
    network = transformers.AutoModelForCausalLM.from_pretrained(
        other, **Quantization.from_name("4bit").from_pretrained_kwargs("cpu")
    )
    with pytest.raises(CheckpointError, match=r"the given base has other frozen weights"):
        load_pretrained(tmp_path, base_model=network)


@pytest.mark.parametrize("name", BITS)
def test_the_peft_export_loads_with_peft_onto_a_quantised_base(bases, name, tmp_path):
    peft = pytest.importorskip("peft")
    model = llama_model(load(bases, "llama", name))
    model.export_peft(tmp_path)
    loaded = peft.PeftModel.from_pretrained(load(bases, "llama", name), tmp_path)
    wrapped = [type(m).__name__ for m in loaded.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(wrapped) == 4 and all(kind.endswith(("Linear4bit", "Linear8bitLt")) for kind in wrapped)
    batch = ids(3)
    with torch.no_grad(), model.mean_adapters():
        # both in training mode: bitsandbytes' 4-bit layers otherwise switch to a bf16 CPU kernel
        # in PEFT's model (this library keeps one), and LLM.int8 handles outliers per mode
        loaded.train()
        model.network.train()
        ours = model.logits(input_ids=batch)
        theirs = loaded(input_ids=batch).logits
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4 if name == "4bit" else 0.05)
    assert not torch.allclose(ours, load(bases, "llama", name)(input_ids=batch).logits, atol=1e-3)
