"""The real pretrained MiniLM on real Rotten Tomatoes sentences: SVI trains, the predictive runs."""

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.data.classification import classification_loader, default_encoder_path, load_rotten_tomatoes
from pyro_monteclora.evaluation.metrics import classification_metrics
from pyro_monteclora.infer.predictive import predict
from pyro_monteclora.training.svi import fit

pytestmark = pytest.mark.integration


def test_minilm_monteclora_beats_the_majority_class():
    path = default_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    splits = load_rotten_tomatoes(seed=0)
    train = classification_loader(
        splits["train"].subset(1920), tokenizer, batch_size=16, max_length=32, shuffle=True, seed=0
    )
    test_data = splits["test"].subset(256)
    test = classification_loader(test_data, tokenizer, batch_size=64, max_length=32)
    hf = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = MonteCLoRAModel(hf, MonteCLoRAConfig(rank=8, modules_to_save=["classifier"]))
    guide = MonteCLoRAGuide(model)
    assert model.num_trainable_parameters() < 0.01 * sum(p.numel() for p in model.parameters())
    result = fit(model, guide, train, epochs=1, learning_rate=3e-3, warmup_ratio=0.1, seed=0, progress=False)
    first, last = result.steps[0]["loss"], sum(s["loss"] for s in result.steps[-10:]) / 10
    assert last < first
    output = predict(model, guide, test, num_samples=3)
    metrics = classification_metrics(output.probs, output.labels, uncertainty=output.predictive_entropy)
    majority = max(sum(test_data.labels), len(test_data) - sum(test_data.labels)) / len(test_data)
    assert metrics["accuracy"] > majority + 0.05, (metrics, majority)
    # a proper score: better than predicting the label frequencies, so the text is used
    prior_entropy = -(majority * math.log(majority) + (1 - majority) * math.log(1 - majority))
    assert metrics["nll"] < prior_entropy - 0.05, (metrics, prior_entropy)
    assert torch.all(output.mutual_information >= 0) and output.mutual_information.mean() > 0
