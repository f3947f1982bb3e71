"""Shared fixtures: tiny random HF configs (fast), offline settings, a clean Pyro state per test."""

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# files read by ``datasets`` leave their Arrow tables in its cache: keep this run's out of ~/.cache
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="pyro-monteclora-datasets-"))
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pyro  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from hypothesis import settings  # noqa: E402

transformers.logging.set_verbosity_error()
transformers.logging.disable_progress_bar()
# Tiny models gain nothing from intra-op threads, and with pytest-xdist workers sharing two cores
# the spinning OpenMP threads slow every small op ~50x. One thread per worker.
torch.set_num_threads(int(os.environ.get("PYRO_MONTECLORA_TEST_THREADS", "1")))

# Property tests draw the same examples on every run (a red CI then means a real regression, not
# an unlucky draw); HYPOTHESIS_PROFILE=explore searches afresh, as when writing a new property.
settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

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


def tiny_bert_classifier(num_labels: int = 2, seed: int = 0, hidden_size: int = 32):
    """A 2-layer, 32-wide random BERT classifier without dropout (deterministic forwards)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)


def tiny_llama(seed: int = 0, initializer_range: float = 0.02, hidden_size: int = 32):
    """A 2-layer, 32-wide random Llama causal LM. Its frozen random ``lm_head`` bounds the logits
    by about ``initializer_range * hidden_size``: tests that must learn a mapping raise it."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        initializer_range=initializer_range,
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


# -- decoders: a word-level tokenizer over a tiny capital-city vocabulary ---------------------------
COUNTRIES = ["france", "peru", "japan", "kenya", "chile", "spain", "egypt", "india"]
CAPITALS = ["paris", "lima", "tokyo", "nairobi", "santiago", "madrid", "cairo", "delhi"]
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0..3, as LlamaConfig's bos=1 / eos=2
QUESTION_WORDS = ["what", "is", "the", "capital", "of", "?", "a", "b", "c", "yes", "no", "answer", "plus", "####"] + [
    str(digit) for digit in range(10)
]
#: the commonsense_15k schema's answer words (appended: the ids above stay as they were)
CHOICE_WORDS = [
    "correct",
    "choose",
    "solution1",
    "solution2",
    "option1",
    "option2",
    "answer1",
    "answer2",
    "answer3",
    "format:",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<s> {{ m['content'] }} </s>{% endfor %}{% if add_generation_prompt %} answer{% endif %}"
)


def word_tokenizer(chat_template: bool = False):
    """A whitespace word-level fast tokenizer over the words above (fewer than 64 ids)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = SPECIAL_TOKENS + QUESTION_WORDS + COUNTRIES + CAPITALS + CHOICE_WORDS
    assert len(vocab) <= VOCAB
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def capital_rows():
    """(question, answer) records in the question-answer schema, one per country."""
    return [
        {"question": f"what is the capital of {country} ?", "answer": capital}
        for country, capital in zip(COUNTRIES, CAPITALS)
    ]


def sum_rows(count: int = 8, seed: int = 0):
    """GSM8k-schema records: a question and a worked answer ending in ``#### <number>``."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(count):
        a, b = torch.randint(0, 5, (2,), generator=generator).tolist()
        rows.append({"question": f"what is {a} plus {b} ?", "answer": f"{a} plus {b} is {a + b} #### {a + b}"})
    return rows
