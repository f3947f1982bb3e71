"""What the library knows about Hugging Face bases: default targets by model type, head names,
padding, and preparing a freshly loaded base (the command line uses exactly these)."""

import pytest
import torch
import transformers
from conftest import VOCAB, tiny_bert_classifier, tiny_gpt2, tiny_llama, word_tokenizer

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAModel
from pyro_monteclora.hf_defaults import (
    HEAD_NAMES,
    TARGET_MODULES_BY_MODEL_TYPE,
    default_modules_to_save,
    default_target_modules,
    end_token_id,
    ensure_pad_token,
    newly_initialised_modules,
    pad_token_id,
    prepare_base,
)


def tiny_llama_classifier(num_labels=3):
    torch.manual_seed(0)
    return transformers.LlamaForSequenceClassification(
        transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            num_labels=num_labels,
        )
    )


def tiny_distilbert_classifier():
    torch.manual_seed(0)
    return transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(
            vocab_size=VOCAB, dim=32, n_layers=1, n_heads=2, hidden_dim=64, max_position_embeddings=64
        )
    )


@pytest.mark.parametrize(
    "build,targets,adapters,head",
    [
        (tiny_bert_classifier, ["query", "value"], 4, ["classifier"]),
        (tiny_distilbert_classifier, ["q_lin", "v_lin"], 2, ["pre_classifier", "classifier"]),
        (tiny_llama, ["q_proj", "k_proj", "v_proj"], 6, []),
        (tiny_llama_classifier, ["q_proj", "k_proj", "v_proj"], 6, ["score"]),
        (tiny_gpt2, ["c_attn"], 2, []),
    ],
)
def test_defaults_by_model_type_adapt_the_tiny_models(build, targets, adapters, head):
    network = build()
    assert default_target_modules(network) == targets
    assert default_modules_to_save(network) == head
    config = MonteCLoRAConfig(
        rank=2, target_modules=default_target_modules(network), modules_to_save=default_modules_to_save(network)
    )
    model = MonteCLoRAModel(network, config)
    assert len(model.adapters()) == adapters


def test_the_defaults_are_constants_a_caller_cannot_change():
    targets = default_target_modules(tiny_bert_classifier())
    targets.append("key")
    assert TARGET_MODULES_BY_MODEL_TYPE["bert"] == ("query", "value")
    with pytest.raises(TypeError):
        TARGET_MODULES_BY_MODEL_TYPE["bert"] = ("key",)
    assert HEAD_NAMES == ("pre_classifier", "classifier", "score")


def test_a_model_type_without_defaults_says_so():
    network = tiny_bert_classifier()
    network.config.model_type = "mamba"
    with pytest.raises(
        ValueError,
        match=r"no default target modules for model type 'mamba' \(there are "
        r"defaults for bert, ",
    ):
        default_target_modules(network)


def decoder_tokenizer_without_pad():
    tokenizer = word_tokenizer()
    tokenizer.pad_token = None
    return tokenizer


def test_pad_id_falls_back_to_the_end_token():
    tokenizer = word_tokenizer()
    assert (pad_token_id(tokenizer), end_token_id(tokenizer)) == (0, 2)
    tokenizer.pad_token = None
    assert pad_token_id(tokenizer) == 2
    bert = transformers.BertTokenizer(vocab={w: i for i, w in enumerate(["[UNK]", "[SEP]", "[CLS]"])}, pad_token=None)
    assert (pad_token_id(bert), end_token_id(bert)) == (1, 1)  # no pad, no eos: sep
    bert.sep_token = None
    with pytest.raises(ValueError, match="BertTokenizer has neither an eos nor a sep token"):
        pad_token_id(bert)


def test_prepare_base_sets_label_maps_and_pad_token():
    network, tokenizer = tiny_llama_classifier(), decoder_tokenizer_without_pad()
    network.config.pad_token_id = None
    fresh = prepare_base(network, tokenizer, ["neg", "neutral", "pos"], {"missing_keys": ["score.weight"]})
    assert fresh == ["score"]
    assert network.config.id2label == {0: "neg", 1: "neutral", 2: "pos"}
    assert network.config.label2id == {"neg": 0, "neutral": 1, "pos": 2}
    assert (tokenizer.pad_token, tokenizer.pad_token_id, network.config.pad_token_id) == ("</s>", 2, 2)
    # batches of unequal lengths now classify each sequence at its own last token
    batch = tokenizer(["what is the capital", "what"], padding=True, return_tensors="pt")
    assert network(**batch).logits.shape == (2, 3)


def test_prepare_base_keeps_what_is_set_and_refuses_a_head_of_another_size():
    network, tokenizer = tiny_bert_classifier(), word_tokenizer()
    network.config.pad_token_id = 5
    assert prepare_base(network, tokenizer) == []
    assert (tokenizer.pad_token, network.config.pad_token_id) == ("<pad>", 5)
    assert network.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    with pytest.raises(ValueError, match=r"label_names must be 2 distinct names .*got \['a', 'b', 'c'\]"):
        prepare_base(network, tokenizer, ["a", "b", "c"])
    with pytest.raises(ValueError, match="distinct"):
        prepare_base(network, tokenizer, ["a", "a"])
    ensure_pad_token(tokenizer)  # a tokenizer alone
    assert tokenizer.pad_token == "<pad>"


def test_weights_the_checkpoint_lacks_are_reported_as_new(tmp_path):
    """A base saved without its pooler and head: both are initialised afresh on loading."""
    base = tiny_bert_classifier()
    base.bert.__class__(base.config, add_pooling_layer=False).save_pretrained(tmp_path)
    network, loading = transformers.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, num_labels=2, output_loading_info=True
    )
    assert prepare_base(network, word_tokenizer(), ["neg", "pos"], loading) == ["bert.pooler.dense", "classifier"]
    assert newly_initialised_modules(None) == []
