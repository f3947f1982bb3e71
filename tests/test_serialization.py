"""save_pretrained / from_pretrained round trips, refusal of foreign or unsafe files, PEFT export."""

import json
import pickle

import pyro
import pytest
import torch
from conftest import classification_batch, tiny_bert_classifier, tiny_gpt2, tiny_llama, without_labels
from safetensors.torch import load_file

from pyro_monteclora import EmptyGuide, MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, predict
from pyro_monteclora.nn.baselines import FullFineTuneModel
from pyro_monteclora.storage.checkpoint import CONFIG_NAME, WEIGHTS_NAME, CheckpointError, load_pretrained

CONFIG = dict(rank=4, alpha=8, target_modules=["query", "value"], modules_to_save=["classifier"], sample_scaler=0.3)


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
    model.save_pretrained(tmp_path, guide=guide, metadata={"note": "x"})

    loaded, loaded_guide = load_pretrained(tmp_path, base_model=tiny_bert_classifier())
    assert isinstance(loaded_guide, MonteCLoRAGuide) and loaded_guide.model is loaded
    assert loaded.pretrained_metadata == {"note": "x"}
    assert loaded.config == model.config and loaded.adapter_mode == "sample"
    after = posterior_predictive(loaded, loaded_guide)
    assert torch.equal(before, after)
    # and the predictive is really random: another seed gives other probabilities
    assert not torch.equal(before, posterior_predictive(loaded, loaded_guide, seed=12))
    for (name, p), (name2, q) in zip(guide.named_parameters(), loaded_guide.named_parameters()):
        assert name == name2 and torch.equal(p, q)
    # the method form returns the model alone
    assert MonteCLoRAModel.from_pretrained(tmp_path, base_model=tiny_bert_classifier()).config == model.config


def test_only_trained_tensors_are_saved(tmp_path):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**CONFIG))
    model.save_pretrained(tmp_path, guide=MonteCLoRAGuide(model))
    names = set(load_file(str(tmp_path / WEIGHTS_NAME)))
    trainable = {"network." + n for n, _ in model.trainable_parameters()}
    assert trainable < names
    assert all(n.startswith("guide.") for n in names - trainable)
    assert not any("base_layer.weight" in n for n in names)  # the frozen base is not copied
    record = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert record["tensors"] == {n: list(t.shape) for n, t in load_file(str(tmp_path / WEIGHTS_NAME)).items()}


def test_full_fine_tuning_round_trip(tmp_path):
    model = FullFineTuneModel(tiny_bert_classifier())
    guide = EmptyGuide(model)
    trained_like(model, guide)
    before = posterior_predictive(model, guide)
    model.save_pretrained(tmp_path, guide=guide)
    loaded, loaded_guide = load_pretrained(tmp_path, base_model=tiny_bert_classifier(seed=5))
    assert isinstance(loaded, FullFineTuneModel) and isinstance(loaded_guide, EmptyGuide)
    assert torch.equal(before, posterior_predictive(loaded, loaded_guide))


def test_a_checkpoint_refuses_another_base_model(tmp_path):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**CONFIG))
    model.save_pretrained(tmp_path, guide=MonteCLoRAGuide(model))
    with pytest.raises(CheckpointError, match="made for base model"):
        load_pretrained(tmp_path, base_model=tiny_bert_classifier(seed=1))
    with pytest.raises(CheckpointError, match="made for a BertForSequenceClassification"):
        load_pretrained(tmp_path, base_model=tiny_llama())


def test_unsafe_or_truncated_weights_are_refused_without_unpickling(tmp_path, monkeypatch):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**CONFIG))
    model.save_pretrained(tmp_path, guide=MonteCLoRAGuide(model))
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


def test_a_version_1_checkpoint_is_still_read(tmp_path):
    """Version 1 saved the guide as a mode ("lora" rewired the model to its mean adapters)."""
    for mode, guide_class, adapter_mode in (("monteclora", MonteCLoRAGuide, "sample"), ("lora", EmptyGuide, "mean")):
        model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**CONFIG), adapter_mode=adapter_mode)
        guide = guide_class(model)
        trained_like(model, guide)
        folder = tmp_path / mode
        model.save_pretrained(folder, guide=guide)
        record = json.loads((folder / CONFIG_NAME).read_text())
        record["format_version"] = 1
        del record["adapter_mode"]
        record["guide"] = {"mode": mode, "scale_tril": "diagonal"}
        (folder / CONFIG_NAME).write_text(json.dumps(record))
        loaded, loaded_guide = load_pretrained(folder, base_model=tiny_bert_classifier())
        assert type(loaded_guide) is guide_class and loaded.adapter_mode == adapter_mode
        assert torch.equal(posterior_predictive(model, guide), posterior_predictive(loaded, loaded_guide))


def test_guides_are_found_through_a_registry(tmp_path):
    from pyro.infer.autoguide import AutoNormal

    from pyro_monteclora import register_guide
    from pyro_monteclora.storage.checkpoint import GUIDE_CLASSES

    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(**CONFIG))
    with pytest.raises(
        CheckpointError,
        match=r"cannot save a AutoNormal guide; registered guide classes are "
        r"\['EmptyGuide', 'MeanFieldGuide', 'MonteCLoRAGuide'\]",
    ):
        model.save_pretrained(tmp_path, guide=AutoNormal(model))
    assert not (tmp_path / CONFIG_NAME).exists()
    with pytest.raises(ValueError, match="no checkpoint_options"):
        register_guide(AutoNormal)

    @register_guide
    class FullScaleGuide(MonteCLoRAGuide):
        def __init__(self, model):
            super().__init__(model, scale_tril="full")

        def checkpoint_options(self):
            return {}

    model.save_pretrained(tmp_path, guide=FullScaleGuide(model))
    _, loaded_guide = load_pretrained(tmp_path, base_model=tiny_bert_classifier())
    assert type(loaded_guide) is FullScaleGuide and loaded_guide.scale_tril_kind == "full"
    record = json.loads((tmp_path / CONFIG_NAME).read_text())
    record["guide"]["class"] = "LaplaceGuide"
    (tmp_path / CONFIG_NAME).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"guide.class must be one of .*got 'LaplaceGuide'"):
        load_pretrained(tmp_path, base_model=tiny_bert_classifier())
    GUIDE_CLASSES.pop("FullScaleGuide")  # the registry is process-wide
