"""predict(): S = 0 is the deterministic forward, MI >= 0 and vanishes at s = 0, averages converge."""

import pytest
import torch
from conftest import classification_batch, tiny_bert_classifier, tiny_llama, without_labels

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.infer.predictive import entropy, predict


def make(sample_scaler=1.0):
    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, sample_scaler=sample_scaler))
    guide = MonteCLoRAGuide(model)
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(std=0.5)
    return model, guide


def loader(batches=2, batch_size=8):
    return [classification_batch(batch_size=batch_size, seed=10 + i) for i in range(batches)]


def test_zero_samples_is_the_mean_adapter_forward():
    model, guide = make()
    out = predict(model, guide, loader(), num_samples=0)
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model.network(**without_labels(b)).logits.softmax(-1) for b in loader()])
    torch.testing.assert_close(out.probs, expected)
    assert torch.all(out.mutual_information == 0)
    assert torch.equal(out.labels, torch.cat([b["labels"] for b in loader()]))


def test_mutual_information_is_nonnegative_and_the_entropies_decompose():
    model, guide = make()
    out = predict(model, guide, loader(), num_samples=6)
    assert torch.all(out.mutual_information >= 0) and out.mutual_information.sum() > 0
    torch.testing.assert_close(out.predictive_entropy, entropy(out.probs))
    torch.testing.assert_close(out.expected_entropy + out.mutual_information, out.predictive_entropy)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(16))


def test_mutual_information_vanishes_without_perturbation():
    model, guide = make(sample_scaler=0.0)
    out = predict(model, guide, loader(), num_samples=5)
    assert out.mutual_information.max() < 1e-6
    mean = predict(model, guide, loader(), num_samples=0)
    torch.testing.assert_close(out.probs, mean.probs, rtol=1e-5, atol=1e-6)


def test_average_converges_as_samples_grow():
    model, guide = make()
    reference = predict(model, guide, loader(1), num_samples=400).probs
    errors = {}
    for samples in (2, 100):
        torch.manual_seed(samples)
        errors[samples] = (predict(model, guide, loader(1), num_samples=samples).probs - reference).abs().mean()
    assert errors[100] < 0.4 * errors[2]


def test_predict_restores_training_mode_and_validates_input():
    model, guide = make()
    model.train()
    predict(model, guide, loader(1), num_samples=1)
    assert model.training
    with pytest.raises(ValueError, match="num_samples"):
        predict(model, guide, loader(1), num_samples=-1)
    with pytest.raises(ValueError, match="empty"):
        predict(model, guide, [], num_samples=1)
    lm = MonteCLoRAModel(tiny_llama(), MonteCLoRAConfig(rank=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="sequence-classification"):
        predict(lm, MonteCLoRAGuide(lm), loader(1))


@pytest.mark.parametrize("scaler", [0.0, 1e4])
def test_extreme_sample_scalers_behave_as_documented(scaler):
    from conftest import classification_batch, tiny_bert_classifier

    from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel

    model = MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=4, sample_scaler=scaler))
    guide = MonteCLoRAGuide(model)
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_()
    batches = [classification_batch()]
    sampled = predict(model, guide, batches, num_samples=4)
    mean = predict(model, guide, batches, num_samples=0)
    assert torch.isfinite(sampled.probs).all()
    if scaler == 0:
        assert torch.allclose(sampled.probs, mean.probs, atol=1e-6)
        assert sampled.mutual_information.max() < 1e-6
    else:  # noise swamps M: still proper distributions with finite uncertainties
        assert torch.allclose(sampled.probs.sum(-1), torch.ones(8, dtype=sampled.probs.dtype))
        assert torch.isfinite(sampled.predictive_entropy).all()
        assert torch.isfinite(sampled.mutual_information).all()


@pytest.mark.parametrize("layout", ["per-layer", "stacked"])
def test_draws_in_one_batched_pass_give_the_same_predictive_as_one_at_a_time(layout):
    import pyro

    model = MonteCLoRAModel(
        tiny_bert_classifier(),
        MonteCLoRAConfig(rank=4, sample_scaler=1.0, modules_to_save=["classifier"], site_layout=layout),
    )
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 0.5)
    guide = MonteCLoRAGuide(model)
    batches = loader()
    results, passes = [], []
    for per_pass in (1, 3, 10):  # one at a time; passes of 3, 3 and 1; all 7 in one pass
        calls = []
        hook = model.network.register_forward_hook(lambda module, args, kwargs, out: calls.append(1), with_kwargs=True)
        pyro.set_rng_seed(4)
        results.append(predict(model, guide, batches, num_samples=7, samples_per_pass=per_pass))
        hook.remove()
        passes.append(len(calls))
    assert passes == [2 * 7, 2 * 3, 2 * 1]  # network forwards for the 2 batches
    for other in results[1:]:
        torch.testing.assert_close(other.probs, results[0].probs, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(other.mutual_information, results[0].mutual_information, rtol=1e-4, atol=1e-6)
    assert results[0].mutual_information.min() > 1e-6  # the draws differ
    with pytest.raises(ValueError, match=r"samples_per_pass must be an integer >= 1, got 0"):
        predict(model, guide, batches, num_samples=3, samples_per_pass=0)
