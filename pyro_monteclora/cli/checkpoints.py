"""Opening a checkpoint for inference: the options ``evaluate``, ``predict`` and ``generate`` share,
finding and validating the saved model, and loading it with its guide and tokenizer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_monteclora.cli.options import (
    LOAD_ERRORS,
    UsageError,
    add_dtype_option,
    check_number,
    check_seed,
    load_error,
    resolve_device,
    resolve_precision,
)
from pyro_monteclora.cli.outputs import check_inputs_outside

__all__ = [
    "CLASSIFIER_BATCH_SIZE",
    "add_inference_options",
    "find_checkpoint",
    "load_for_inference",
    "open_model",
    "recorded_label_names",
    "default_samples",
    "record_method",
    "checkpoint_predictive",
    "check_evaluation_inputs",
]


def _check_metadata(record: dict, path: Path) -> None:
    """The ``metadata`` fields the commands read back from a checkpoint, each of the right type
    (the data specification as ``train --resume`` checks run.json's)."""
    from pyro_monteclora.cli.sources import check_data_spec
    from pyro_monteclora.validation import FieldError, get_field

    metadata = record.get("metadata", {})
    name = f"{path}: metadata"
    try:
        get_field(metadata, "model_path", f"{name}.model_path", "text", nullable=True, default=None)
        get_field(metadata, "method", f"{name}.method", "text", default=None)
        get_field(metadata, "max_length", f"{name}.max_length", "integer", minimum=2, default=None)
        arguments = get_field(metadata, "arguments", f"{name}.arguments", "object", default={})
        get_field(arguments, "model", f"{name}.arguments.model", "text", nullable=True, default=None)
    except FieldError as error:
        raise UsageError(str(error)) from None
    if metadata.get("data") is not None:
        check_data_spec(metadata["data"], f"{name}.data")


#: default examples per batch for a classifier
CLASSIFIER_BATCH_SIZE = 64


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``predict``: the checkpoint, S, batch size, seed, device."""
    parser.add_argument(
        "--checkpoint", required=True, help="a run folder from `train`, or a folder written by save_pretrained"
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="S posterior samples per example (default: 10 for monteclora, blob and mc-dropout, else 0; "
        "0 = the mean adapter)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="examples per batch (default: 64 for a classifier, 16 sequences for a causal LM)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seeds the posterior samples")
    parser.add_argument(
        "--uncalibrated",
        action="store_true",
        help="leave out the temperature the checkpoint was calibrated with (train --calibrate temperature)",
    )
    parser.add_argument("--model", default=None, help="the base model (default: the one the checkpoint was trained on)")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_dtype_option(parser)


def find_checkpoint(path: str) -> Path:
    """The saved-model folder: ``path`` itself, or the ``checkpoint`` folder of a run."""
    from pyro_monteclora.cli.runs import checkpoint_candidates
    from pyro_monteclora.storage.checkpoint import CONFIG_NAME

    base = Path(path)
    for candidate in (base, *checkpoint_candidates(base)):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    raise UsageError(f"--checkpoint {path}: no saved model there ({CONFIG_NAME} is missing)")


def load_for_inference(args, likelihoods=("sequence-classification",)):
    """Validate the inference options and read ``--checkpoint``'s JSON record (no weights yet).

    :param likelihoods: the kinds of model the command takes.
    :returns: ``(checkpoint folder, record, torch device)``; :func:`open_model` loads the weights.
    """
    from pyro_monteclora.storage.checkpoint import CheckpointError, read_saved_config

    check_number("--num-samples", args.num_samples, minimum=0, integer=True)
    check_number("--batch-size", args.batch_size, minimum=1, integer=True)
    check_seed("--seed", args.seed)
    directory = find_checkpoint(args.checkpoint)
    try:
        record = read_saved_config(directory)
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    _check_metadata(record, directory / "monteclora_config.json")
    if record["likelihood"] not in likelihoods:
        kinds = " or ".join(likelihoods)
        raise UsageError(
            f"--checkpoint {args.checkpoint}: a {record['likelihood']} model; this command takes {kinds} models"
        )
    device = resolve_device(args.device)
    args.torch_dtype = resolve_precision(getattr(args, "dtype", "fp32"), device)
    _check_quantized_base(directory, record, device)
    return directory, record, device


def _check_quantized_base(directory: Path, record: dict, device) -> None:
    """A checkpoint trained on a quantised base loads it quantised again: refuse it (exit 2, before
    anything is loaded or written) when bitsandbytes is missing or cannot run it on ``device``."""
    from pyro_monteclora.quantization import QuantizationError, check_quantization_device
    from pyro_monteclora.storage.bases import recorded_quantization

    try:
        quantization = recorded_quantization(record)
        if quantization is not None:
            check_quantization_device(quantization, device)
    except QuantizationError as error:
        raise UsageError(f"--checkpoint {directory}: its base is quantised: {error}") from None


def open_model(directory: Path, record: dict, args, device):
    """Load the checkpoint's model, guide and tokenizer; errors become exit 2.
    With ``--dtype bf16/fp16`` the frozen base is cast to it (run it under
    :func:`~pyro_monteclora.nn.precision.autocast`)."""
    import torch
    from transformers import AutoTokenizer

    from pyro_monteclora.hf_defaults import ensure_pad_token
    from pyro_monteclora.storage.checkpoint import CheckpointError, load_pretrained

    metadata = record.get("metadata", {})
    base = args.model or metadata.get("model_path") or record["base_model"]["name_or_path"]
    if args.model is None and not Path(base).exists() and "arguments" in metadata:
        # a converted GGUF folder from another machine's cache: convert the recorded source again
        from pyro_monteclora.cli.options import resolve_model_path

        given = metadata["arguments"].get("model")
        if given is None or given.lower().endswith(".gguf"):
            base = resolve_model_path(given, record["likelihood"])
    tokenizer_source = directory if (directory / "tokenizer_config.json").is_file() else base
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, trust_remote_code=args.trust_remote_code)
    except Exception as error:  # see LOAD_ERRORS: a bad tokenizer.json raises a bare Exception
        where = f"--checkpoint {directory}: its tokenizer" if tokenizer_source == directory else f"--model {base}"
        raise UsageError(f"{where}: {type(error).__name__}: {error}".splitlines()[0]) from None
    try:
        model, guide = load_pretrained(
            directory, base_model=base, trust_remote_code=args.trust_remote_code, device=device
        )
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    except LOAD_ERRORS as error:
        raise UsageError(f"--model {base}: {load_error(error)}") from None
    if getattr(args, "torch_dtype", None) not in (None, torch.float32):
        from pyro_monteclora.nn.precision import cast_frozen

        cast_frozen(model.network, args.torch_dtype)
    ensure_pad_token(tokenizer, model.network)  # decoder tokenizers: pad with end-of-text
    return model, guide, tokenizer


def recorded_label_names(record: dict) -> list:
    """The label set the checkpoint was trained with (``"0"`` .. ``"K-1"`` if it has none)."""
    names = ((record.get("metadata") or {}).get("data") or {}).get("label_names")
    return list(names) if names else [str(i) for i in range(record["base_model"]["num_labels"])]


def record_method(record: dict) -> str:
    """The method a checkpoint was trained with: ``metadata["method"]`` (``train`` writes it), else
    read from the model and guide (a folder written by ``save_pretrained``)."""
    method = (record.get("metadata") or {}).get("method")
    if method:
        return method
    guide = (record.get("guide") or {}).get("class")
    if record.get("adapter_mode") == "sample":
        return "blob" if guide == "MeanFieldGuide" else "monteclora"
    return "full" if record.get("model_class") == "FullFineTuneModel" else "lora"


def default_samples(record: dict, requested):
    """``requested``, else the method's default: 10 for one that samples (monteclora, blob,
    mc-dropout), 0 otherwise (the mean adapter, the ensemble's members' means, Laplace's GLM)."""
    from pyro_monteclora.infer.methods import default_num_samples

    if requested is not None:
        return requested
    guide = (record.get("guide") or {}).get("class")
    if record.get("adapter_mode") == "sample" and guide in ("MonteCLoRAGuide", "MeanFieldGuide"):
        return 10  # a posterior to sample, ensemble members included
    return default_num_samples(record_method(record))


def checkpoint_predictive(directory: Path, record: dict, model, guide, args):
    """The checkpoint's method's predictive (:func:`~pyro_monteclora.infer.methods.method_predictive`),
    with its fitted temperature unless ``--uncalibrated``; problems become exit 2."""
    from pyro_monteclora.infer.methods import method_predictive
    from pyro_monteclora.storage.checkpoint import CheckpointError

    try:
        return method_predictive(
            model, guide, record_method(record), directory, calibration=not getattr(args, "uncalibrated", False)
        )
    except (CheckpointError, ValueError) as error:
        raise UsageError(f"--checkpoint {directory}: {error}") from None


def check_evaluation_inputs(args, output: Path, directory: Path, record: dict, data_spec: dict) -> None:
    """Refuse an ``--output`` folder that holds the checkpoint, the base model or a data file this
    evaluation reads (replacing it would delete them)."""
    metadata = record.get("metadata") or {}
    inputs = [("--checkpoint", directory), ("--model", args.model or metadata.get("model_path"))]
    files = (data_spec or {}).get("files") or {}
    inputs += [(f"the {split} data", path) for split, path in files.items()]
    check_inputs_outside(output, inputs)
