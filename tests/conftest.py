"""Shared fixtures: tiny random HF configs (fast), offline settings, a clean Pyro state per test."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
# Tiny models gain nothing from intra-op threads, and with pytest-xdist workers sharing two cores
# the spinning OpenMP threads slow every small op ~50x. One thread per worker.
torch.set_num_threads(int(os.environ.get("PYRO_MONTECLORA_TEST_THREADS", "1")))

VOCAB = 64


@pytest.fixture(autouse=True)
def clean_pyro_state():
    pyro.clear_param_store()
    pyro.settings.set(module_local_params=False)
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()
    pyro.settings.set(module_local_params=False)


def tiny_bert_classifier(num_labels: int = 2, seed: int = 0):
    """A 2-layer, 32-wide random BERT classifier without dropout (deterministic forwards)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=num_labels,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)


def tiny_llama(seed: int = 0):
    """A 2-layer, 32-wide random Llama causal LM."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)


def tiny_gpt2(seed: int = 0):
    """A 2-layer random GPT-2 (its attention projections are HF ``Conv1D``)."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    return transformers.GPT2LMHeadModel(config)


def classification_batch(batch_size: int = 8, length: int = 10, seed: int = 1, num_labels: int = 2):
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, VOCAB, (batch_size, length), generator=generator),
        "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch_size,), generator=generator),
    }


def without_labels(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k != "labels"}
