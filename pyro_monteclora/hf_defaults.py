"""What the package knows about Hugging Face models: default adapted layers by ``model_type``, the
names of classification heads, the padding token, and preparing a freshly loaded base.

As PEFT's ``utils/constants.py`` does for LoRA, the defaults are library constants, so the command
line and a user's own script adapt the same layers:

>>> TARGET_MODULES_BY_MODEL_TYPE["bert"], TARGET_MODULES_BY_MODEL_TYPE["llama"]
(('query', 'value'), ('q_proj', 'k_proj', 'v_proj'))

:func:`prepare_base` does to a base just loaded with ``from_pretrained`` what training needs: the
label names as ``id2label``/``label2id``, a padding token (the end-of-text token when the tokenizer
has none, as decoders' tokenizers) and the list of modules ``from_pretrained`` initialised afresh,
which are then trained as point estimates with the head (``modules_to_save``) so that nothing random
stays frozen in the model.

This module imports nothing from the rest of the package (a leaf of its import graph).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "TARGET_MODULES_BY_MODEL_TYPE",
    "HEAD_NAMES",
    "model_type",
    "default_target_modules",
    "default_modules_to_save",
    "newly_initialised_modules",
    "end_token_id",
    "pad_token_id",
    "ensure_pad_token",
    "set_label_names",
    "prepare_base",
]

#: default adapted layers per ``config.model_type``: the paper's query/value projections for
#: encoders, the attention's query/key/value projections for decoders
TARGET_MODULES_BY_MODEL_TYPE: Mapping[str, Tuple[str, ...]] = MappingProxyType(
    {
        "bert": ("query", "value"),
        "roberta": ("query", "value"),
        "xlm-roberta": ("query", "value"),
        "electra": ("query", "value"),
        "deberta": ("in_proj",),
        "deberta-v2": ("query_proj", "value_proj"),
        "distilbert": ("q_lin", "v_lin"),
        "gpt2": ("c_attn",),
        "llama": ("q_proj", "k_proj", "v_proj"),
        "mistral": ("q_proj", "k_proj", "v_proj"),
        "qwen2": ("q_proj", "k_proj", "v_proj"),
    }
)
#: names of the classification heads of ``AutoModelForSequenceClassification`` models (BERT's
#: ``classifier``, DistilBERT's ``pre_classifier``, the decoders' ``score``)
HEAD_NAMES: Tuple[str, ...] = ("pre_classifier", "classifier", "score")


def model_type(network) -> Optional[str]:
    """The network's ``config.model_type`` (``None`` for a module without an HF config)."""
    return getattr(getattr(network, "config", None), "model_type", None)


def default_target_modules(network) -> List[str]:
    """The layers adapted by default for the network's ``model_type``.

    :raises ValueError: for a model type without a default (name the layers yourself).
    """
    kind = model_type(network)
    if kind not in TARGET_MODULES_BY_MODEL_TYPE:
        raise ValueError(
            f"no default target modules for model type {kind!r} (there are defaults for "
            f"{', '.join(sorted(TARGET_MODULES_BY_MODEL_TYPE))}); name the layers to adapt"
        )
    return list(TARGET_MODULES_BY_MODEL_TYPE[kind])


def default_modules_to_save(network) -> List[str]:
    """The classification head's modules that the network has (in :data:`HEAD_NAMES` order)."""
    names = {path.rsplit(".", 1)[-1] for path, _ in network.named_modules() if path}
    return [name for name in HEAD_NAMES if name in names]


def newly_initialised_modules(loading_info: Optional[Mapping[str, Any]]) -> List[str]:
    """The modules holding weights the checkpoint lacks, from ``from_pretrained(...,
    output_loading_info=True)``'s ``missing_keys`` (sorted, each once)."""
    missing = (loading_info or {}).get("missing_keys", [])
    return sorted({key.rsplit(".", 1)[0] for key in missing})


def end_token_id(tokenizer) -> int:
    """The id that ends a response: the tokenizer's ``eos`` (``sep`` for BERT-style vocabularies).

    :raises ValueError: when the tokenizer has neither.
    """
    for name in ("eos_token_id", "sep_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError(f"{type(tokenizer).__name__} has neither an eos nor a sep token to end responses")


def pad_token_id(tokenizer) -> int:
    """The id that pads a batch: the tokenizer's ``pad`` token, else :func:`end_token_id` (decoder
    tokenizers often have no padding token; padded positions are masked out anyway)."""
    value = getattr(tokenizer, "pad_token_id", None)
    return int(value) if value is not None else end_token_id(tokenizer)


def ensure_pad_token(tokenizer, network=None) -> None:
    """Give a tokenizer without a padding token its end token (``eos``, else ``sep``) as one, and
    ``network.config.pad_token_id`` the tokenizer's when it has none (a decoder's classification
    head finds each sequence's last token through it). Changes nothing that is already set."""
    if getattr(tokenizer, "pad_token", None) is None:
        end = getattr(tokenizer, "eos_token", None) or getattr(tokenizer, "sep_token", None)
        if end is not None:
            tokenizer.pad_token = end
    config = getattr(network, "config", None)
    if config is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = getattr(tokenizer, "pad_token_id", None)


def set_label_names(network, label_names: Sequence[str]) -> None:
    """Record the label names in the network's config (``id2label``/``label2id``), so a saved
    model and its pipelines speak in names.

    :raises ValueError: when the network's head has another number of labels.
    """
    names = list(label_names)
    num_labels = getattr(network.config, "num_labels", len(names))
    if len(set(names)) != len(names) or num_labels != len(names):
        raise ValueError(f"label_names must be {num_labels} distinct names (the head's number of labels), got {names}")
    network.config.id2label = dict(enumerate(names))
    network.config.label2id = {name: index for index, name in enumerate(names)}


def prepare_base(
    network, tokenizer, label_names: Optional[Sequence[str]] = None, loading_info: Optional[Mapping[str, Any]] = None
) -> List[str]:
    """Prepare a base just loaded with ``from_pretrained`` for training: the label names (a
    classifier; see :func:`set_label_names`), a padding token (:func:`ensure_pad_token`).

    :param loading_info: what ``from_pretrained(..., output_loading_info=True)`` returned with the
        network.
    :returns: the modules ``from_pretrained`` initialised afresh (:func:`newly_initialised_modules`);
        train them as point estimates with the head (``modules_to_save``).

    >>> import transformers
    >>> from tokenizers import Tokenizer, models
    >>> config = transformers.GPT2Config(vocab_size=8, n_embd=8, n_layer=1, n_head=2, num_labels=2)
    >>> network = transformers.GPT2ForSequenceClassification(config)
    >>> tokenizer = transformers.PreTrainedTokenizerFast(
    ...     tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1}, unk_token="<unk>")),
    ...     eos_token="</s>", unk_token="<unk>")
    >>> prepare_base(network, tokenizer, ["neg", "pos"], {"missing_keys": ["score.weight"]})
    ['score']
    >>> network.config.id2label, tokenizer.pad_token, network.config.pad_token_id
    ({0: 'neg', 1: 'pos'}, '</s>', 1)
    """
    if label_names is not None:
        set_label_names(network, label_names)
    ensure_pad_token(tokenizer, network)
    return newly_initialised_modules(loading_info)
