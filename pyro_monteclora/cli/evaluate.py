"""``pyro-monteclora evaluate``: the posterior predictive of a checkpoint on labelled data.

Writes ``metrics.json`` (accuracy, NLL, ECE, Brier, error AUROC of the predictive entropy, mean
entropy and mutual information), ``reliability.png`` and ``predictions.jsonl`` (one line per example:
the probabilities, the predictive entropy and the mutual information).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .options import (LOAD_ERRORS, UsageError, add_data_options, add_dtype_option, check_inputs_outside,
                      check_number, check_seed, check_writable, evaluation_split, existing_output,
                      load_error, resolve_data, resolve_device, resolve_precision, task_of)

__all__ = ["add_evaluate_parser", "run_evaluate", "find_checkpoint", "load_for_inference",
           "evaluation_output", "check_evaluation_inputs", "open_model", "default_samples",
           "prediction_rows", "recorded_label_names", "UNITS"]

#: default examples per batch for a classifier
CLASSIFIER_BATCH_SIZE = 64
UNITS = ("accuracy, ece and error_auroc are fractions in [0, 1], not percent; nll, entropies and "
         "mutual information are in nats; brier is in [0, 2]")


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command and its options."""
    parser = subparsers.add_parser(
        "evaluate", help="posterior-predictive metrics, a reliability diagram and per-example output",
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_inference_options(parser)
    add_data_options(parser, ("test",))
    parser.add_argument("--ece-bins", type=int, default=15, help="equal-width confidence bins of the ECE")
    parser.add_argument("--split", default=None, choices=["test", "validation", "train"],
                        help="which split of the checkpoint's data (or of --task/--dataset) to use "
                             "(default: test when it has labels, else validation, as for GLUE)")
    parser.add_argument("--max-samples", type=int, default=None,
                        help="evaluate on the first N examples only (default: all)")
    parser.add_argument("--multiple-choice", action="store_true",
                        help="causal-lm: score each option of question/choices/answer records by its "
                             "log-likelihood (accuracy, NLL, ECE, Brier over the options)")
    parser.add_argument("--length-normalize", action="store_true",
                        help="with --multiple-choice: divide each option's log-likelihood by its tokens")
    parser.add_argument("--max-new-tokens", type=int, default=256,
                        help="generation tasks (gsm8k): tokens generated per answer for the exact match")
    parser.add_argument("--output", default=None,
                        help="folder for the results (default: <run>/evaluation)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    parser.set_defaults(handler=run_evaluate)
    return parser


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``evaluate`` and ``predict``: the checkpoint, S, batch size, seed, device."""
    parser.add_argument("--checkpoint", required=True,
                        help="a run folder from `train`, or a folder written by save_pretrained")
    parser.add_argument("--num-samples", type=int, default=None,
                        help="S posterior samples per example (default: 10 for monteclora, else 0; "
                             "0 = the mean adapter)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="examples per batch (default: 64 for a classifier, 16 sequences for a "
                             "causal LM)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the posterior samples")
    parser.add_argument("--model", default=None,
                        help="the base model (default: the one the checkpoint was trained on)")
    parser.add_argument("--trust-remote-code", action="store_true")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_dtype_option(parser)


def find_checkpoint(path: str) -> Path:
    """The saved-model folder: ``path`` itself, or the ``checkpoint`` folder of a run."""
    from ..serialization import CONFIG_NAME

    from .runs import checkpoint_candidates

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
    from ..serialization import CheckpointError, read_saved_config

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
        raise UsageError(f"--checkpoint {args.checkpoint}: a {record['likelihood']} model; "
                         f"this command takes {kinds} models")
    device = resolve_device(args.device)
    args.torch_dtype = resolve_precision(getattr(args, "dtype", "fp32"), device)
    return directory, record, device


def _check_metadata(record: dict, path: Path) -> None:
    """The ``metadata`` fields the commands read back from a checkpoint, each of the right type
    (the data specification as ``train --resume`` checks run.json's)."""
    from .._fields import FieldError, get_field
    from .options import check_data_spec

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


def open_model(directory: Path, record: dict, args, device):
    """Load the checkpoint's model, guide and tokenizer; errors become exit 2.
    With ``--dtype bf16/fp16`` the frozen base is cast to it (run it under
    :func:`~pyro_monteclora.precision.autocast`)."""
    import torch
    from transformers import AutoTokenizer

    from ..hf_defaults import ensure_pad_token
    from ..serialization import CheckpointError, load_pretrained

    metadata = record.get("metadata", {})
    base = args.model or metadata.get("model_path") or record["base_model"]["name_or_path"]
    if args.model is None and not Path(base).exists() and "arguments" in metadata:
        # a converted GGUF folder from another machine's cache: convert the recorded source again
        from .options import resolve_model_path

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
        model, guide = load_pretrained(directory, base_model=base, trust_remote_code=args.trust_remote_code,
                                       device=device)
    except CheckpointError as error:
        raise UsageError(str(error)) from None
    except LOAD_ERRORS as error:
        raise UsageError(f"--model {base}: {load_error(error)}") from None
    if getattr(args, "torch_dtype", None) not in (None, torch.float32):
        from ..precision import cast_frozen

        cast_frozen(model.network, args.torch_dtype)
    ensure_pad_token(tokenizer, model.network)  # decoder tokenizers: pad with end-of-text
    return model, guide, tokenizer


def prediction_rows(data, output, label_names):
    """One JSON-able dict per example of ``data`` with the predictive's outputs."""
    for index in range(len(data)):
        probs = output.probs[index].tolist()
        row = {"index": index, "text": data.texts[index]}
        if data.text_pairs is not None:
            row["text_pair"] = data.text_pairs[index]
        predicted = max(range(len(probs)), key=probs.__getitem__)
        row.update({
            "predicted": label_names[predicted],
            "probabilities": {name: p for name, p in zip(label_names, probs)},
            "predictive_entropy": output.predictive_entropy[index].item(),
            "expected_entropy": output.expected_entropy[index].item(),
            "mutual_information": output.mutual_information[index].item(),
        })
        if output.labels is not None:
            row["label"] = label_names[int(output.labels[index])]
            row["correct"] = predicted == int(output.labels[index])
        yield row


def recorded_label_names(record: dict) -> list:
    """The label set the checkpoint was trained with (``"0"`` .. ``"K-1"`` if it has none)."""
    names = ((record.get("metadata") or {}).get("data") or {}).get("label_names")
    return list(names) if names else [str(i) for i in range(record["base_model"]["num_labels"])]


def default_samples(record: dict, requested):
    """``requested``, else 10 for a MonteCLoRA guide and 0 (the mean adapter) otherwise."""
    if requested is not None:
        return requested
    guide = record.get("guide") or {}
    return 10 if record.get("adapter_mode") == "sample" and guide.get("class") == "MonteCLoRAGuide" else 0


def evaluation_output(args, directory: Path) -> Path:
    """``--output`` (default ``<run>/evaluation``), checked against ``--overwrite``."""
    run_folder = directory.parent if directory.name.startswith("checkpoint") else directory
    output = Path(args.output) if args.output else run_folder / "evaluation"
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} exists and is not a folder")
    check_writable(output, "--output")
    if existing_output(output):
        if not args.overwrite:
            raise UsageError(f"--output {output} already exists; pass --overwrite to replace its results")
        if not (output / "metrics.json").is_file():
            raise UsageError(f"--overwrite: {output} holds no earlier evaluation (no metrics.json); "
                             f"refusing to replace it")
    return output


def check_evaluation_inputs(args, output: Path, directory: Path, record: dict, data_spec: dict) -> None:
    """Refuse an ``--output`` folder that holds the checkpoint, the base model or a data file this
    evaluation reads (replacing it would delete them)."""
    metadata = record.get("metadata") or {}
    inputs = [("--checkpoint", directory), ("--model", args.model or metadata.get("model_path"))]
    files = (data_spec or {}).get("files") or {}
    inputs += [(f"the {split} data", path) for split, path in files.items()]
    check_inputs_outside(output, inputs)


def run_evaluate(args, parser_defaults: dict) -> int:
    """Validate, run the posterior predictive, write the three result files; returns 0."""
    check_number("--ece-bins", args.ece_bins, minimum=1, maximum=1000, integer=True)
    check_number("--max-samples", args.max_samples, minimum=1, integer=True)
    directory, record, device = load_for_inference(args, ("sequence-classification", "causal-lm"))
    output = evaluation_output(args, directory)
    if record["likelihood"] == "causal-lm":
        from .evaluate_lm import run_evaluate_causal_lm

        return run_evaluate_causal_lm(args, directory, record, device, output)
    if args.multiple_choice:
        raise UsageError("--multiple-choice scores the options with a causal-lm checkpoint; "
                         f"{args.checkpoint} holds a classifier")
    metadata = record.get("metadata", {})
    label_names = recorded_label_names(record)
    if args.split not in (None, "test") and args.test_file:
        raise UsageError("--split names a split of the recorded data, --task or --dataset; "
                         "with --test-file leave it out")
    args.split = evaluation_split(args, metadata.get("data"))
    splits, data_spec = resolve_data(args, (args.split,), label_names=label_names,
                                     recorded=metadata.get("data"))
    check_evaluation_inputs(args, output, directory, record, data_spec)
    task = task_of(args, data_spec)
    model, guide, tokenizer = open_model(directory, record, args, device)

    import pyro

    from ..atomic import atomic_directory, atomic_write_json, atomic_write_text, json_line
    from ..data import classification_loader
    from ..metrics import classification_metrics, reliability_curve
    from ..precision import autocast
    from ..predictive import predict

    data = splits[args.split]
    if args.max_samples:
        data = data.subset(args.max_samples)
    num_samples = default_samples(record, args.num_samples)
    loader = classification_loader(data, tokenizer, args.batch_size or CLASSIFIER_BATCH_SIZE,
                                   metadata.get("max_length", 128))
    pyro.set_rng_seed(args.seed)
    started = time.perf_counter()
    with autocast(device, args.torch_dtype):
        result = predict(model, guide, loader, num_samples=num_samples, progress=True)
    seconds = time.perf_counter() - started
    metrics = classification_metrics(result.probs, result.labels, args.ece_bins,
                                     uncertainty=result.predictive_entropy)
    metrics.update({"mean_predictive_entropy": result.predictive_entropy.mean().item(),
                    "mean_mutual_information": result.mutual_information.mean().item()})
    curve = reliability_curve(result.probs, result.labels, args.ece_bins)
    method = metadata.get("method", record["model_class"])
    with atomic_directory(output) as staging:  # the three files appear together, or not at all
        lines = "".join(json_line(row) + "\n" for row in prediction_rows(data, result, label_names))
        atomic_write_text(staging / "predictions.jsonl", lines)
        try:
            from ..plots import plot_reliability_diagram

            plot_reliability_diagram({f"{method} (S={num_samples})": curve},
                                     staging / "reliability.png", title=f"{len(data):,} examples")
        except ImportError:
            print("reliability.png skipped: matplotlib is not installed (pip install matplotlib)",
                  file=sys.stderr)
        atomic_write_json(staging / "metrics.json", {
            "units": UNITS, "metrics": metrics, "method": method, "num_samples": num_samples,
            "task": task.name if task else None, "task_metric": task.metric if task else "accuracy",
            "ece_bins": args.ece_bins, "examples": len(data), "split": args.split,
            "seed": args.seed, "checkpoint": str(directory), "data": data_spec,
            "eval_seconds": seconds, "reliability": curve})
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)), flush=True)
    print(f"wrote {output}/metrics.json, reliability.png, predictions.jsonl", file=sys.stderr)
    return 0
