"""Saving and loading trained models: safetensors for tensors, JSON for everything else.

A saved model is a folder with two files:

``monteclora_config.json``
    the format tag and version, the model class (``MonteCLoRAModel`` or ``FullFineTuneModel``) and
    its adapter mode, the :class:`~pyro_monteclora.MonteCLoRAConfig`, the guide's class and
    options (``null`` when saved without a guide), the likelihood, a description of
    the base model (its ``name_or_path``, class, ``model_type``, a fingerprint of its frozen
    weights and its ``quantization``: ``null``, or the
    :class:`~pyro_monteclora.quantization.Quantization` it was loaded with, which loading repeats),
    the name and shape of every saved tensor, and free-form ``metadata``;
``model.safetensors``
    the trained tensors only: ``network.<parameter name>`` (adapter means :math:`M`, :math:`B`,
    ``modules_to_save``, trained biases; every weight for full fine-tuning) and ``guide.<name>``
    (the variational parameters :math:`\\sigma, \\beta`).

Nothing is ever unpickled: the loader reads JSON and safetensors only, and a file that is not
valid safetensors (a pickle renamed, a truncated download) is refused with an error naming it.
Classes are found by name in two registries, :data:`MODEL_CLASSES` and :data:`GUIDE_CLASSES`, which
the classes join with :func:`register_model` and :func:`register_guide` (so this module imports
none of them); a guide class of your own needs a ``checkpoint_options()`` method returning its
constructor's keyword arguments as JSON. :func:`export_peft` writes the
posterior-mean adapter :math:`E_q[A] = M` in PEFT's LoRA format.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pyro_monteclora.quantization import QuantizationError, check_quantization_device
from pyro_monteclora.storage.atomic import atomic_file, atomic_write_json
from pyro_monteclora.storage.bases import (
    base_fingerprint,
    describe_base,
    recorded_quantization,
    same_base,
)
from pyro_monteclora.validation import FieldError, check_value, get_field, parse_json

__all__ = [
    "save_pretrained",
    "load_pretrained",
    "read_saved_config",
    "export_peft",
    "register_model",
    "register_guide",
    "MODEL_CLASSES",
    "GUIDE_CLASSES",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CheckpointError",
    "trained_tensors",
    "load_trained_tensors",
    "read_trained_tensors",
]

FORMAT = "pyro-monteclora"
#: 2: the guide is saved by class name and options, the model's adapter mode on its own
#: (version 1 saved a guide "mode"; it is still read)
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
CONFIG_NAME = "monteclora_config.json"
WEIGHTS_NAME = "model.safetensors"
#: the output layers of Hugging Face classification heads (BERT/DistilBERT, decoders, RoBERTa)
HEAD_WEIGHTS = ("network.classifier.weight", "network.score.weight", "network.classifier.out_proj.weight")
PEFT_TASK_TYPES = {"sequence-classification": "SEQ_CLS", "causal-lm": "CAUSAL_LM"}


class CheckpointError(ValueError):
    """A saved model that cannot be read or does not fit the base model it is loaded onto."""


#: model classes a checkpoint may name (:func:`register_model`)
MODEL_CLASSES: Dict[str, type] = {}
#: guide classes a checkpoint may name (:func:`register_guide`)
GUIDE_CLASSES: Dict[str, type] = {}


def register_model(cls: type) -> type:
    """Let checkpoints save and load models of class ``cls`` (a class decorator).

    ``cls(network, config, likelihood=..., adapter_mode=...)`` (or ``cls(network, likelihood=...)``
    for a class without a config) must rebuild the model around a fresh base.
    """
    MODEL_CLASSES[cls.__name__] = cls
    return cls


def register_guide(cls: type) -> type:
    """Let checkpoints save and load guides of class ``cls`` (usable as a class decorator).

    ``cls(model, **options)`` must rebuild the guide from ``guide.checkpoint_options()`` (a JSON
    dictionary), with the same parameter names and shapes.
    """
    if not callable(getattr(cls, "checkpoint_options", None)):
        raise ValueError(f"register_guide: {cls.__name__} has no checkpoint_options() method")
    GUIDE_CLASSES[cls.__name__] = cls
    return cls


def trained_tensors(model, guide=None) -> Dict[str, torch.Tensor]:
    """CPU copies of what training changes: ``network.<name>`` for the model's trainable parameters
    and ``guide.<name>`` for the guide's (the tensors a checkpoint, or an ensemble member, holds)."""
    return _tensors_to_save(model, guide)


def load_trained_tensors(model, guide, tensors: Dict[str, torch.Tensor], source="the tensors") -> None:
    """Copy :func:`trained_tensors`-style ``tensors`` into ``model`` (and ``guide``) in place.

    :raises CheckpointError: names or shapes that differ from the model's (``source`` names them).
    """
    _copy_saved_tensors(model, guide, tensors, source)


def read_trained_tensors(directory: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """The trained tensors saved in ``directory`` (checked against its record), without loading
    a base model: what an ensemble takes from each member's checkpoint."""
    directory = Path(directory)
    return _read_checkpoint_tensors(directory, read_saved_config(directory))


def _tensors_to_save(model, guide) -> Dict[str, torch.Tensor]:
    # clone: tied weights share storage, which safetensors refuses
    tensors = {
        f"network.{name}": p.detach().to("cpu", copy=True).contiguous() for name, p in model.trainable_parameters()
    }
    if guide is not None:
        tensors.update(
            {f"guide.{name}": p.detach().to("cpu", copy=True).contiguous() for name, p in guide.named_parameters()}
        )
    return tensors


def save_pretrained(model, directory: Union[str, os.PathLike], guide=None, metadata: Optional[dict] = None) -> Path:
    """Write ``model``'s trained tensors, and ``guide``'s if given, to ``directory``.

    Each file is written to a temporary name and renamed; the JSON goes last. Other files in
    ``directory`` (a tokenizer, say) are left alone.

    :raises CheckpointError: a guide whose class is not registered (see :func:`register_guide`).
    """
    from pyro_monteclora._version import __version__

    guide_record = None
    if guide is not None:
        name = type(guide).__name__
        if GUIDE_CLASSES.get(name) is not type(guide):
            raise CheckpointError(
                f"save_pretrained: cannot save a {name} guide; registered guide "
                f"classes are {sorted(GUIDE_CLASSES)} (see register_guide)"
            )
        guide_record = {"class": name, "options": guide.checkpoint_options()}
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"save_pretrained: {directory} exists and is not a folder")
    directory.mkdir(parents=True, exist_ok=True)
    tensors = _tensors_to_save(model, guide)
    config = getattr(model, "config", None)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "model_class": type(model).__name__,
        "adapter_mode": model.adapter_mode,
        "config": config.to_dict() if config is not None else None,
        "guide": guide_record,
        "likelihood": model.likelihood.name,
        "base_model": dict(describe_base(model.network), fingerprint=base_fingerprint(model)),
        "tensors": {name: list(t.shape) for name, t in tensors.items()},
        "metadata": metadata or {},
    }
    with atomic_file(directory / WEIGHTS_NAME) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    atomic_write_json(directory / CONFIG_NAME, record)
    return directory


def read_saved_config(directory: Union[str, os.PathLike]) -> dict:
    """The JSON record of a saved model, validated (format tag and version)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a saved pyro_monteclora model: no {CONFIG_NAME}")
    try:
        record = parse_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a pyro_monteclora config (format is not {FORMAT!r})")
    if record.get("format_version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"{path} has format_version {record.get('format_version')!r}; "
            f"this library reads versions {list(READABLE_VERSIONS)}"
        )
    if record["format_version"] == 1:
        record = _upgrade_version_1(record)
    try:
        _check_record(record)
    except FieldError as error:
        raise CheckpointError(f"{path}: {error}") from None
    return record


def _upgrade_version_1(record: dict) -> dict:
    """A version-1 record in version 2's terms: its guide ``mode`` ``"lora"`` was a model with
    mean adapters and no guide variables, ``"monteclora"`` the structured guide."""
    record = dict(record)
    guide = record.get("guide")
    lora = isinstance(guide, dict) and guide.get("mode") == "lora"
    record["adapter_mode"] = "mean" if lora or record.get("model_class") == "FullFineTuneModel" else "sample"
    if isinstance(guide, dict):
        record["guide"] = (
            {"class": "EmptyGuide", "options": {}}
            if lora
            else {"class": "MonteCLoRAGuide", "options": {"scale_tril": guide.get("scale_tril", "diagonal")}}
        )
    return record


def _check_record(record: dict) -> None:
    """Every field :func:`load_pretrained` reads, of the right type (:class:`FieldError` if not):
    a missing key or a ``null`` where an object belongs is named here, not met as a ``KeyError``."""
    from pyro_monteclora.config import MonteCLoRAConfig

    model_class = get_field(record, "model_class", "model_class", tuple(MODEL_CLASSES))
    get_field(record, "adapter_mode", "adapter_mode", ("sample", "mean"))
    config = get_field(record, "config", "config", "object", nullable=model_class != "MonteCLoRAModel")
    rank = None
    if model_class == "MonteCLoRAModel":
        try:
            rank = MonteCLoRAConfig.from_dict(config).rank
        except (TypeError, ValueError) as error:
            raise FieldError(f"config: {error}") from None
    guide = get_field(record, "guide", "guide", "object", nullable=True)
    if guide is not None:
        get_field(guide, "class", "guide.class", tuple(GUIDE_CLASSES))
        get_field(guide, "options", "guide.options", "object")
    # the likelihood's name is checked by the model class it is given to (storage knows no likelihood)
    likelihood = get_field(record, "likelihood", "likelihood", "text")
    base = get_field(record, "base_model", "base_model", "object")
    get_field(base, "architecture", "base_model.architecture", "text")
    get_field(base, "name_or_path", "base_model.name_or_path", "text", nullable=True, default=None)
    get_field(
        base,
        "num_labels",
        "base_model.num_labels",
        "integer",
        minimum=1,
        nullable=likelihood != "sequence-classification",
        default=None,
    )
    get_field(base, "pad_token_id", "base_model.pad_token_id", "integer", minimum=0, nullable=True, default=None)
    for index, value in enumerate(
        get_field(base, "fingerprint", "base_model.fingerprint", "list", nullable=True, default=None) or []
    ):
        check_value(f"base_model.fingerprint[{index}]", value, "number")
    quantization = get_field(base, "quantization", "base_model.quantization", "object", nullable=True, default=None)
    if quantization is not None:
        recorded_quantization(record)  # read field by field (FieldError naming it)
    tensors = get_field(record, "tensors", "tensors", "object")
    for name, shape in tensors.items():
        check_value(f"tensors.{name}", shape, "list")
        for size in shape:
            check_value(f"tensors.{name}", size, "integer", minimum=0)
        # the rank sizes every adapter: a config whose rank its tensors do not have is refused
        # before anything of that rank is allocated
        if rank is not None and name.endswith(".lora_A_mean") and shape[:1] != [rank]:
            raise FieldError(f"config.rank is {rank} but tensors.{name} has shape {shape}")
    get_field(record, "metadata", "metadata", "object", default={})
    # the classifier's output layer is saved with the head: it has num_labels rows
    heads = {shape[0] for name, shape in tensors.items() if shape and name in HEAD_WEIGHTS}
    if likelihood == "sequence-classification" and heads and base.get("num_labels") not in heads:
        raise FieldError(
            f"base_model.num_labels is {base.get('num_labels')} but the saved classifier has {sorted(heads)[0]} outputs"
        )


def _read_tensors(path: Path) -> Dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a floating-point tensor holding NaN or an infinity (a
    damaged or diverged checkpoint) is refused, naming the file and the tensor."""
    if not path.is_file():
        raise CheckpointError(f"missing tensor file {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:  # never falls back to torch.load
        raise CheckpointError(f"{path} is not a valid safetensors file ({error})") from None
    for name, tensor in tensors.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"{path}: tensor {name!r} holds NaN or infinite values; the "
                f"checkpoint is damaged (train again, or resume from a good copy)"
            )
    return tensors


def _load_base(record: dict, base_model, trust_remote_code: bool, torch_dtype, source: Path, device=None):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    described = record["base_model"]
    if base_model is None:
        base_model = described.get("name_or_path")
        if not base_model:
            raise CheckpointError("the checkpoint does not record its base model; pass base_model=")
    if isinstance(base_model, torch.nn.Module):
        return base_model
    # safetensors only: a base folder with nothing but pytorch_model.bin is refused, not unpickled
    kwargs = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    quantization = recorded_quantization(record)
    if quantization is not None:  # the same quantised base again, placed on the device as it loads
        try:
            check_quantization_device(quantization, device or "cpu")
        except QuantizationError as error:
            raise CheckpointError(f"{source}: the checkpoint's base is quantised: {error}") from None
        kwargs.update(quantization.from_pretrained_kwargs(device or "cpu"))
    if described.get("pad_token_id") is not None:
        from transformers import AutoConfig

        # an id past the vocabulary fails an assertion deep in the embedding: named here instead
        vocabulary = getattr(
            AutoConfig.from_pretrained(base_model, trust_remote_code=trust_remote_code), "vocab_size", None
        )
        if isinstance(vocabulary, int) and described["pad_token_id"] >= vocabulary:
            raise CheckpointError(
                f"{source}: base_model.pad_token_id is {described['pad_token_id']}, "
                f"outside the base model's {vocabulary}-token vocabulary"
            )
        kwargs["pad_token_id"] = described["pad_token_id"]
    if record["likelihood"] == "sequence-classification":
        return AutoModelForSequenceClassification.from_pretrained(
            base_model, num_labels=described["num_labels"], **kwargs
        )
    return AutoModelForCausalLM.from_pretrained(base_model, **kwargs)


def load_pretrained(
    directory: Union[str, os.PathLike],
    base_model=None,
    *,
    trust_remote_code: bool = False,
    torch_dtype=None,
    device=None,
    check_base: bool = True,
):
    """Rebuild a model and its guide saved by :func:`save_pretrained`.

    :returns: ``(model, guide)``; ``guide`` is ``None`` when the checkpoint was saved without one.

    :param base_model: a freshly loaded HF model (``nn.Module``), a folder or hub name, or ``None``
        for the ``name_or_path`` the checkpoint records.
    :param bool trust_remote_code: passed to ``from_pretrained`` (off unless you ask).
    :param bool check_base: refuse a base whose frozen weights differ from the training base's
        (compares the recorded fingerprint; a quantised base against an unquantised record, or the
        other way round, to the 4-bit rounding bound).
    :param device: where the model and guide go; a base the checkpoint records as quantised is
        loaded quantised the same way, straight onto this device (default: the CPU).
    :raises CheckpointError: unreadable files, or a base model the checkpoint was not made for.
    """
    directory = Path(directory)
    record = read_saved_config(directory)
    tensors = _read_checkpoint_tensors(directory, record)
    network = _load_base(record, base_model, trust_remote_code, torch_dtype, directory / CONFIG_NAME, device)
    described = record["base_model"]
    if type(network).__name__ != described["architecture"]:
        raise CheckpointError(
            f"the checkpoint in {directory} was made for a {described['architecture']}, got a {type(network).__name__}"
        )
    model = _rebuild_model(record, network, directory)
    if check_base and not same_base(described.get("fingerprint"), model, described.get("quantization")):
        raise CheckpointError(
            f"the checkpoint in {directory} was made for base model "
            f"{described.get('name_or_path')!r}; the given base has other frozen weights "
            f"(pass check_base=False to load it anyway)"
        )
    guide = _rebuild_guide(record, model, directory)
    _copy_saved_tensors(model, guide, tensors, directory)
    if device is not None:
        model.to(device)
        if guide is not None:
            guide.to(device)
    model.pretrained_metadata = record.get("metadata", {})
    return model, guide


def _read_checkpoint_tensors(directory: Path, record: dict) -> Dict[str, torch.Tensor]:
    """The saved tensors, refused unless they are exactly those the record lists, all floating point."""
    tensors = _read_tensors(directory / WEIGHTS_NAME)
    if {k: list(v.shape) for k, v in tensors.items()} != record["tensors"]:
        raise CheckpointError(
            f"{directory / WEIGHTS_NAME} does not hold the tensors that "
            f"{CONFIG_NAME} lists (a partial or mixed checkpoint)"
        )
    # every trained tensor is floating point: integers (or booleans) would be cast silently
    wrong = next((name for name, tensor in tensors.items() if not tensor.is_floating_point()), None)
    if wrong is not None:
        raise CheckpointError(
            f"{directory / WEIGHTS_NAME}: the tensor {wrong} is {tensors[wrong].dtype}, not floating point"
        )
    return tensors


def _rebuild_model(record: dict, network, directory: Path):
    """The recorded model class over ``network``, with the recorded config, likelihood and adapter mode."""
    from pyro_monteclora.config import MonteCLoRAConfig

    model_class = MODEL_CLASSES[record["model_class"]]  # a registered class (_check_record)
    try:
        if record.get("config") is not None:
            return model_class(
                network,
                MonteCLoRAConfig.from_dict(record["config"]),
                likelihood=record["likelihood"],
                adapter_mode=record["adapter_mode"],
            )
        return model_class(network, likelihood=record["likelihood"])
    except (TypeError, ValueError) as error:  # a likelihood or config this model class refuses
        raise CheckpointError(f"{directory / CONFIG_NAME}: {error}") from None


def _rebuild_guide(record: dict, model, directory: Path):
    """The recorded guide class over ``model`` with its recorded options, or ``None`` if none was saved."""
    if record["guide"] is None:
        return None
    guide_class = GUIDE_CLASSES[record["guide"]["class"]]  # registered (_check_record)
    try:
        return guide_class(model, **record["guide"]["options"])
    except (TypeError, ValueError) as error:  # options this guide class refuses
        raise CheckpointError(f"{directory / CONFIG_NAME}: guide.options: {error}") from None


def _copy_saved_tensors(model, guide, tensors: Dict[str, torch.Tensor], directory: Path) -> None:
    """Copy the saved tensors into the model's trainable parameters and the guide's parameters,
    refusing a set of names or a shape that differs."""
    targets = dict(("network." + n, p) for n, p in model.trainable_parameters())
    if guide is not None:
        targets.update(("guide." + n, p) for n, p in guide.named_parameters())
    if set(targets) != set(tensors):
        missing, extra = sorted(set(targets) - set(tensors)), sorted(set(tensors) - set(targets))
        raise CheckpointError(
            f"the checkpoint in {directory} does not fit this base model: missing {missing[:3]}, unexpected {extra[:3]}"
        )
    with torch.no_grad():
        for name, parameter in targets.items():
            if parameter.shape != tensors[name].shape:
                raise CheckpointError(
                    f"the checkpoint in {directory} does not fit this base model: {name} has shape "
                    f"{tuple(tensors[name].shape)} there and {tuple(parameter.shape)} here"
                )
            parameter.copy_(tensors[name])


def export_peft(model, directory: Union[str, os.PathLike], base_model_name_or_path: Optional[str] = None) -> Path:
    """Write the posterior-mean adapter (:math:`A = M`, :math:`B`) as a PEFT LoRA adapter.

    The folder gets ``adapter_config.json`` and ``adapter_model.safetensors``, loadable with
    ``peft.PeftModel.from_pretrained(base, directory)``; its logits are the mean adapter's
    (``model.mean_adapters()``). ``modules_to_save`` and trained biases are included.
    """
    adapters = model.adapters()
    if not adapters or getattr(model, "config", None) is None:
        raise ValueError(f"export_peft needs a model with adapters (a MonteCLoRAModel), got {type(model).__name__}")
    config = model.config
    tensors = {}
    for name, parameter in model.trainable_parameters():
        if name.endswith(".lora_A_mean"):
            name = name[: -len(".lora_A_mean")] + ".lora_A.weight"
        elif name.endswith(".lora_B"):
            name = name + ".weight"
        tensors[f"base_model.model.{name}"] = parameter.detach().to("cpu", copy=True).contiguous()
    peft_config = {
        "peft_type": "LORA",
        "task_type": PEFT_TASK_TYPES.get(model.likelihood.name),
        "base_model_name_or_path": base_model_name_or_path or describe_base(model.network)["name_or_path"],
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": sorted(adapters),
        "modules_to_save": list(config.modules_to_save) or None,
        "bias": "lora_only" if config.bias == "all" else "none",
        "fan_in_fan_out": any(adapter.transposed for adapter in adapters.values()),
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
    }
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_file(directory / "adapter_model.safetensors") as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})
    atomic_write_json(directory / "adapter_config.json", peft_config)
    return directory
