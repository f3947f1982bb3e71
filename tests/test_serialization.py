"""save_pretrained / from_pretrained round trips, refusal of foreign or unsafe files, PEFT export."""

import json
import pickle

import pyro
import pytest
import torch
from safetensors.torch import load_file

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, predict
from pyro_monteclora.baselines import FullFineTuneModel
from pyro_monteclora.serialization import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_pretrained

from conftest import classification_batch, tiny_bert_classifier, tiny_gpt2, tiny_llama, without_labels

CONFIG = dict(rank=4, alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"],
              sample_scaler=0.3)


def trained_like(model, guide, seed=3):
    """Move every trainable tensor away from its initial value, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in model.trainable_parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))
        for parameter in guide.parameters():
            parameter.add_(0.2 * torch.randn(parameter.shape, generator=generator))


def batches(n=2):
    return [classification_batch(seed=s) for s in range(n)]


def posterior_predictive(model, guide, seed=11):
    pyro.set_rng_seed(seed)
    return predict(model, guide, batches(), num_samples=3).probs


def test_round_trip_gives_the_same_predictive_for_the_same_seed(tmp_path):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**CONFIG))
    guide = MonteCLoRAGuide(model)
    trained_like(model, guide)
    before = posterior_predictive(model, guide)
    model.save_pretrained(tmp_path, metadata={"note": "x"})

    loaded = MonteCLoRAModel.from_pretrained(tmp_path, base_model=tiny_bert_classifier())
    assert loaded.guide is not None and loaded.guide.mode == "monteclora"
    assert loaded.pretrained_metadata == {"note": "x"}
    assert loaded.config == model.config
    after = posterior_predictive(loaded, loaded.guide)
    assert torch.equal(before, after)
    # and the predictive is really random: another seed gives other probabilities
    assert not torch.equal(before, posterior_predictive(loaded, loaded.guide, seed=12))
    for (name, p), (name2, q) in zip(guide.named_parameters(), loaded.guide.named_parameters()):
        assert name == name2 and torch.equal(p, q)


def test_only_trained_tensors_are_saved(tmp_path):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**CONFIG))
    MonteCLoRAGuide(model)
    model.save_pretrained(tmp_path)
    names = set(load_file(str(tmp_path / WEIGHTS_NAME)))
    trainable = {"network." + n for n, _ in model.trainable_parameters()}
    assert trainable < names
    assert all(n.startswith("guide.") for n in names - trainable)
    assert not any("base_layer.weight" in n for n in names)  # the frozen base is not copied
    record = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert record["tensors"] == {n: list(t.shape) for n, t in load_file(str(tmp_path / WEIGHTS_NAME)).items()}


def test_full_fine_tuning_round_trip(tmp_path):
    model = FullFineTuneModel(tiny_bert_classifier())
    guide = MonteCLoRAGuide(model, mode="lora")
    trained_like(model, guide)
    before = posterior_predictive(model, guide)
    model.save_pretrained(tmp_path)
    loaded = FullFineTuneModel.from_pretrained(tmp_path, base_model=tiny_bert_classifier(seed=5))
    assert torch.equal(before, posterior_predictive(loaded, loaded.guide))


def test_a_checkpoint_refuses_another_base_model(tmp_path):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**CONFIG))
    MonteCLoRAGuide(model)
    model.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="made for base model"):
        load_pretrained(tmp_path, base_model=tiny_bert_classifier(seed=1))
    with pytest.raises(CheckpointError, match="made for a BertForSequenceClassification"):
        load_pretrained(tmp_path, base_model=tiny_llama())


def test_unsafe_or_truncated_weights_are_refused_without_unpickling(tmp_path, monkeypatch):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**CONFIG))
    MonteCLoRAGuide(model)
    model.save_pretrained(tmp_path)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must never run"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("pickle.load must never run"))
    weights = tmp_path / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_pretrained(tmp_path, base_model=tiny_bert_classifier())
    weights.write_bytes(pickle.dumps({"network.x": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_pretrained(tmp_path, base_model=tiny_bert_classifier())
    (tmp_path / CONFIG_NAME).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_pretrained(tmp_path, base_model=tiny_bert_classifier())


def test_export_peft_loads_in_peft_with_the_mean_adapter_logits(tmp_path):
    peft = pytest.importorskip("peft")
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**CONFIG, bias="all"))
    guide = MonteCLoRAGuide(model)
    trained_like(model, guide)
    model.export_peft(tmp_path)
    batch = without_labels(classification_batch())
    model.eval()
    with torch.no_grad(), model.mean_adapters():
        expected = model(**batch)
    peft_model = peft.PeftModel.from_pretrained(tiny_bert_classifier(), tmp_path).eval()
    with torch.no_grad():
        got = peft_model(**batch).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # a zero B would make this test pass trivially
    assert any(a.lora_B.abs().max() > 0.1 for a in model.adapters().values())


def test_export_peft_of_gpt2_conv1d_layers(tmp_path):
    peft = pytest.importorskip("peft")
    model = MonteCLoRAModel(tiny_gpt2(), MonteCLoRAConfig(rank=4, alpha=8, target_modules=["c_attn"]))
    guide = MonteCLoRAGuide(model)
    trained_like(model, guide)
    model.export_peft(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    input_ids = classification_batch()["input_ids"]
    model.eval()
    with torch.no_grad(), model.mean_adapters():
        expected = model(input_ids=input_ids)
    peft_model = peft.PeftModel.from_pretrained(tiny_gpt2(), tmp_path).eval()
    with torch.no_grad():
        got = peft_model(input_ids=input_ids).logits
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
