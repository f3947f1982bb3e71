"""The calibration baselines as predictives: temperature scaling, MC dropout, ensembles."""

import math

import pytest
import torch
from conftest import classification_batch, tiny_bert_classifier

from pyro_monteclora import EmptyGuide, MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.evaluation.metrics import accuracy, negative_log_likelihood
from pyro_monteclora.infer.ensembles import combine_predictives, ensemble_predict
from pyro_monteclora.infer.mc_dropout import mc_dropout_predict
from pyro_monteclora.infer.predictive import PredictiveOutput, entropy, predict
from pyro_monteclora.infer.temperature import fit_temperature, temper, temper_output, tempered_nll
from pyro_monteclora.storage.calibration import read_calibration, save_calibration
from pyro_monteclora.storage.checkpoint import CheckpointError, trained_tensors
from pyro_monteclora.storage.ensembles import read_ensemble_members, save_ensemble_members


def loader(batches=2, batch_size=8):
    return [classification_batch(batch_size=batch_size, seed=10 + i) for i in range(batches)]


def lora(dropout=0.0, seed=0):
    torch.manual_seed(seed)
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, dropout=dropout), adapter_mode="mean")
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(std=0.5)
    return model, EmptyGuide(model)


# -- temperature scaling ---------------------------------------------------------------------------
def overconfident(n=4000, true_temperature=2.5, seed=0):
    """Logits whose labels follow softmax(logits / true_temperature): the NLL's minimiser is T = 2.5."""
    generator = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(n, 3, generator=generator, dtype=torch.float64)
    labels = torch.multinomial((logits / true_temperature).softmax(-1), 1, generator=generator).view(-1)
    return logits.softmax(-1), labels


def test_temperature_recovers_the_temperature_the_labels_were_drawn_at():
    probs, labels = overconfident()
    assert fit_temperature(probs, labels) == pytest.approx(2.5, rel=0.06)


def test_temperature_keeps_every_argmax_and_lowers_the_validation_nll():
    probs, labels = overconfident()
    T = fit_temperature(probs, labels)
    tempered = temper(probs, T)
    assert torch.equal(tempered.argmax(-1), probs.argmax(-1))
    assert accuracy(tempered, labels) == accuracy(probs, labels)
    assert negative_log_likelihood(tempered, labels) < negative_log_likelihood(probs, labels) - 0.05
    assert tempered_nll(probs, labels, T) == pytest.approx(negative_log_likelihood(tempered, labels), abs=1e-6)
    # the minimum: a little either side is worse
    for other in (T * 0.9, T * 1.1):
        assert tempered_nll(probs, labels, other) > tempered_nll(probs, labels, T)


def test_temperature_one_is_the_identity_and_a_calibrated_predictive_keeps_it():
    probs, labels = overconfident(true_temperature=1.0)
    torch.testing.assert_close(temper(probs, 1.0), probs)
    assert fit_temperature(probs, labels) == pytest.approx(1.0, abs=0.06)


def test_tempered_output_keeps_the_mutual_information_and_the_decomposition():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4]])
    out = PredictiveOutput(probs, entropy(probs), entropy(probs) - 0.01, torch.full((2,), 0.01), None)
    tempered = temper_output(out, 2.0)
    torch.testing.assert_close(tempered.mutual_information, out.mutual_information)
    torch.testing.assert_close(tempered.expected_entropy + tempered.mutual_information, tempered.predictive_entropy)
    # by hand: 0.9^(1/2) / (0.9^(1/2) + 0.1^(1/2))
    assert float(tempered.probs[0, 0]) == pytest.approx(math.sqrt(0.9) / (math.sqrt(0.9) + math.sqrt(0.1)), rel=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_bad_temperature_is_refused(bad):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
        temper(torch.tensor([[0.5, 0.5]]), bad)


def test_calibration_record_round_trips_and_a_bad_one_is_refused(tmp_path):
    save_calibration(tmp_path, 2.0, {"fitted_on": "validation", "num_samples": 10})
    assert read_calibration(tmp_path)["temperature"] == 2.0
    (tmp_path / "calibration.json").write_text(
        '{"format": "pyro-monteclora-calibration", "format_version": 1, "method": "temperature", "temperature": -1}'
    )
    with pytest.raises(CheckpointError, match="temperature must be"):
        read_calibration(tmp_path)
    assert read_calibration(tmp_path / "missing") is None


# -- MC dropout ------------------------------------------------------------------------------------
def test_mc_dropout_with_p_zero_equals_lora():
    model, guide = lora(dropout=0.0)
    lora_out = predict(model, guide, loader(), num_samples=0)
    mc = mc_dropout_predict(model, loader(), num_samples=4)
    torch.testing.assert_close(mc.probs, lora_out.probs)
    assert torch.all(mc.mutual_information == 0)


def test_mc_dropout_draws_differ_and_zero_samples_is_lora():
    model, guide = lora(dropout=0.3)
    lora_out = predict(model, guide, loader(), num_samples=0)
    torch.testing.assert_close(mc_dropout_predict(model, loader(), num_samples=0).probs, lora_out.probs)
    mc = mc_dropout_predict(model, loader(), num_samples=6)
    assert mc.mutual_information.mean() > 1e-9  # a tiny random classifier: probabilities near 0.5
    assert not torch.allclose(mc.probs, lora_out.probs)
    # the adapters' dropout is back off, and the model in the mode it had
    assert model.training and all(not a.dropout.training or model.training for a in model.adapters().values())
    model.eval()
    assert all(not a.dropout.training for a in model.adapters().values())


def test_mc_dropout_refuses_a_monteclora_model():
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, dropout=0.1))
    with pytest.raises(ValueError, match="MC dropout applies to a LoRA model"):
        mc_dropout_predict(model, loader())


# -- ensembles -------------------------------------------------------------------------------------
def test_an_ensemble_of_identical_members_equals_the_member():
    model, guide = lora()
    alone = predict(model, guide, loader(), num_samples=0)
    member = trained_tensors(model, guide)
    out = ensemble_predict(model, guide, [member, member, member], loader())
    torch.testing.assert_close(out.probs, alone.probs)
    assert torch.all(out.mutual_information < 1e-6)


def test_an_ensemble_averages_its_members_and_gives_the_model_back():
    model, guide = lora(seed=0)
    first = trained_tensors(model, guide)
    p_first = predict(model, guide, loader(), num_samples=0).probs
    other, other_guide = lora(seed=1)
    second = trained_tensors(other, other_guide)
    p_second = predict(other, other_guide, loader(), num_samples=0).probs
    out = ensemble_predict(model, guide, [first, second], loader())
    torch.testing.assert_close(out.probs, (p_first + p_second) / 2)
    assert out.mutual_information.mean() > 0
    torch.testing.assert_close(out.expected_entropy, (entropy(p_first) + entropy(p_second)) / 2, atol=1e-5, rtol=0)
    for name, tensor in trained_tensors(model, guide).items():  # the model has its own tensors back
        assert torch.equal(tensor, first[name])


def test_an_ensemble_of_monteclora_members_pools_every_draw():
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, sample_scaler=1.0))
    guide = MonteCLoRAGuide(model)
    member = trained_tensors(model, guide)
    torch.manual_seed(3)
    out = ensemble_predict(model, guide, [member, member], loader(), num_samples=3)
    assert out.mutual_information.mean() > 0


def test_combine_predictives_by_hand():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    outs = [PredictiveOutput(p, entropy(p), entropy(p), torch.zeros(1), torch.tensor([0])) for p in (a, b)]
    combined = combine_predictives(outs)
    torch.testing.assert_close(combined.probs, torch.tensor([[0.5, 0.5]]))
    assert float(combined.mutual_information[0]) == pytest.approx(math.log(2), rel=1e-6)
    with pytest.raises(ValueError, match="at least 1 member"):
        combine_predictives([])


def test_ensemble_members_round_trip_and_mismatches_are_refused(tmp_path):
    model, guide = lora(seed=0)
    other, other_guide = lora(seed=1)
    members = [trained_tensors(model, guide), trained_tensors(other, other_guide)]
    save_ensemble_members(tmp_path, members, "deep", [{"seed": 0}, {"seed": 1}])
    kind, details, loaded = read_ensemble_members(tmp_path)
    assert kind == "deep" and details == [{"seed": 0}, {"seed": 1}]
    for saved, back in zip(members, loaded):
        assert saved.keys() == back.keys() and all(torch.equal(saved[k], back[k]) for k in saved)
    torch.testing.assert_close(
        ensemble_predict(model, guide, loaded, loader()).probs, ensemble_predict(model, guide, members, loader()).probs
    )
    with pytest.raises(ValueError, match="member 1 has other tensors"):
        save_ensemble_members(tmp_path / "x", [members[0], {"network.w": torch.zeros(1)}], "deep", [{}, {}])
    with pytest.raises(ValueError, match="kind must be one of"):
        save_ensemble_members(tmp_path / "y", members, "bagged", [{}, {}])
    with pytest.raises(ValueError, match="at least 1 member"):
        save_ensemble_members(tmp_path / "z", [], "deep", [])
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


# -- an evaluation-time posterior scale ----------------------------------------------------------
def test_posterior_scale_one_is_the_trained_posterior_zero_the_mean_and_wider_spreads_more():
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, sample_scaler=0.05))
    guide = MonteCLoRAGuide(model)
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(std=0.5)

    def run(factor):
        torch.manual_seed(7)
        with model.posterior_scale(factor):
            return predict(model, guide, loader(), num_samples=6)

    torch.manual_seed(7)
    trained = predict(model, guide, loader(), num_samples=6)
    torch.testing.assert_close(run(1.0).probs, trained.probs)
    torch.testing.assert_close(run(0.0).probs, predict(model, guide, loader(), num_samples=0).probs)
    assert run(4.0).mutual_information.mean() > 2 * run(1.0).mutual_information.mean()
    assert all(a.config.sample_scaler == 0.05 for a in model.adapters().values())  # restored
    with pytest.raises(ValueError, match="finite number >= 0"):
        with model.posterior_scale(-1.0):
            pass
