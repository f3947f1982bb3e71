"""Likelihoods: log-densities equal hand-computed cross-entropies, masking follows HF's -100."""

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_bert_classifier, tiny_llama
from pyro import poutine

from pyro_monteclora import CausalLM, MonteCLoRAConfig, MonteCLoRAModel, SequenceClassification
from pyro_monteclora.nn.likelihoods import get_likelihood


def observe(likelihood, logits, labels, dataset_size=None):
    trace = poutine.trace(likelihood.observe).get_trace(logits, labels, dataset_size)
    trace.compute_log_prob()
    return trace.nodes["obs"]


def test_classification_log_prob_is_scaled_cross_entropy():
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    site = observe(SequenceClassification(), logits, labels, dataset_size=40)
    expected = -F.cross_entropy(logits, labels, reduction="sum")
    torch.testing.assert_close(site["log_prob_sum"] / site["scale"], expected)
    assert site["scale"] == pytest.approx(10.0)


def test_causal_lm_masks_ignored_tokens_and_shifts():
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 1, 2, -100, -100]])
    site = observe(CausalLM(), logits, labels)
    shifted = F.cross_entropy(
        logits[:, :-1].reshape(-1, 7), labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )
    torch.testing.assert_close(site["log_prob_sum"], -shifted)
    assert site["value"].shape == (2, 4)


def test_causal_lm_model_end_to_end_matches_hf_loss():
    model = MonteCLoRAModel(
        tiny_llama(),
        MonteCLoRAConfig(rank=2, target_modules=["q_proj", "v_proj"]),
        likelihood="causal-lm",
        adapter_mode="mean",
    )
    ids = torch.randint(1, 64, (3, 6))
    labels = ids.clone()
    labels[:, :2] = -100
    trace = poutine.trace(model).get_trace(input_ids=ids, labels=labels)
    trace.compute_log_prob()
    hf_loss = model.network(input_ids=ids, labels=labels).loss  # mean over the 3 * 4 labelled tokens
    torch.testing.assert_close(-trace.nodes["obs"]["log_prob_sum"] / 12, hf_loss, rtol=1e-5, atol=1e-5)


def test_auto_likelihood_reads_the_model_class():
    assert isinstance(get_likelihood("auto", tiny_bert_classifier()), SequenceClassification)
    assert isinstance(get_likelihood("auto", tiny_llama()), CausalLM)
    with pytest.raises(ValueError, match="likelihood='auto'"):
        get_likelihood("auto", torch.nn.Linear(2, 2))


def test_bad_label_shapes_and_dataset_sizes_are_rejected():
    with pytest.raises(ValueError, match="labels must have shape"):
        SequenceClassification().observe(torch.randn(4, 2), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="dataset_size"):
        SequenceClassification().observe(torch.randn(4, 2), torch.zeros(4, dtype=torch.long), 2)
