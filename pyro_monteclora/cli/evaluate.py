"""``pyro-monteclora evaluate``: the posterior predictive of a checkpoint on labelled data.

Writes ``metrics.json`` (accuracy, NLL, ECE, Brier, error AUROC of the predictive entropy, mean
entropy and mutual information), ``reliability.png`` and ``predictions.jsonl`` (one line per example:
the probabilities, the predictive entropy and the mutual information).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from pyro_monteclora.cli.checkpoints import (
    CLASSIFIER_BATCH_SIZE,
    add_inference_options,
    check_evaluation_inputs,
    checkpoint_predictive,
    default_samples,
    load_for_inference,
    open_model,
    record_method,
    recorded_label_names,
)
from pyro_monteclora.cli.options import UsageError, add_data_options, check_number
from pyro_monteclora.cli.outputs import check_writable, existing_output
from pyro_monteclora.cli.reports import prediction_rows, predictive_metrics, write_results
from pyro_monteclora.cli.sources import evaluation_split, resolve_data, task_of

__all__ = ["add_evaluate_parser", "run_evaluate", "evaluation_output"]


def add_evaluate_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``evaluate`` sub-command and its options."""
    parser = subparsers.add_parser(
        "evaluate",
        help="posterior-predictive metrics, a reliability diagram and per-example output",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_inference_options(parser)
    add_data_options(parser, ("test",))
    parser.add_argument("--ece-bins", type=int, default=15, help="equal-width confidence bins of the ECE")
    parser.add_argument(
        "--split",
        default=None,
        choices=["test", "validation", "train"],
        help="which split of the checkpoint's data (or of --task/--dataset) to use "
        "(default: test when it has labels, else validation, as for GLUE)",
    )
    parser.add_argument(
        "--max-samples", type=int, default=None, help="evaluate on the first N examples only (default: all)"
    )
    parser.add_argument(
        "--multiple-choice",
        action="store_true",
        help="causal-lm: score each option of question/choices/answer records by its "
        "log-likelihood (accuracy, NLL, ECE, Brier over the options)",
    )
    parser.add_argument(
        "--length-normalize",
        action="store_true",
        help="with --multiple-choice: divide each option's log-likelihood by its tokens",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=int,
        default=256,
        help="generation tasks (gsm8k): tokens generated per answer for the exact match",
    )
    parser.add_argument("--output", default=None, help="folder for the results (default: <run>/evaluation)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing results")
    parser.set_defaults(handler=run_evaluate)
    return parser


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
            raise UsageError(
                f"--overwrite: {output} holds no earlier evaluation (no metrics.json); refusing to replace it"
            )
    return output


def run_evaluate(args, parser_defaults: dict) -> int:
    """Validate, run the posterior predictive, write the three result files; returns 0."""
    check_number("--ece-bins", args.ece_bins, minimum=1, maximum=1000, integer=True)
    check_number("--max-samples", args.max_samples, minimum=1, integer=True)
    directory, record, device = load_for_inference(args, ("sequence-classification", "causal-lm"))
    output = evaluation_output(args, directory)
    if record["likelihood"] == "causal-lm":
        from pyro_monteclora.cli.evaluate_lm import run_evaluate_causal_lm

        return run_evaluate_causal_lm(args, directory, record, device, output)
    if args.multiple_choice:
        raise UsageError(
            f"--multiple-choice scores the options with a causal-lm checkpoint; {args.checkpoint} holds a classifier"
        )
    metadata = record.get("metadata", {})
    label_names = recorded_label_names(record)
    splits, data_spec, task = _classifier_data(args, directory, record, output, label_names)
    model, guide, tokenizer = open_model(directory, record, args, device)
    data = splits[args.split]
    if args.max_samples:
        data = data.subset(args.max_samples)
    num_samples = default_samples(record, args.num_samples)
    predictive = checkpoint_predictive(directory, record, model, guide, args)
    result, seconds = _predict(args, predictive, tokenizer, data, num_samples, metadata.get("max_length", 128), device)
    metrics, curve = predictive_metrics(result, args.ece_bins)
    method = record_method(record)
    write_results(
        output,
        prediction_rows(data, result, label_names),
        curve,
        f"{method}{' + temperature' if predictive.temperature else ''} (S={num_samples})",
        f"{len(data):,} examples",
        {
            "metrics": metrics,
            "method": method,
            "num_samples": num_samples,
            "temperature": predictive.temperature,
            "task": task.name if task else None,
            "task_metric": task.metric if task else "accuracy",
            "ece_bins": args.ece_bins,
            "examples": len(data),
            "split": args.split,
            "seed": args.seed,
            "checkpoint": str(directory),
            "data": data_spec,
            "eval_seconds": seconds,
        },
    )
    return 0


def _classifier_data(args, directory: Path, record: dict, output: Path, label_names):
    """The labelled split to evaluate (``--split``, else the data's evaluation split; from the
    command line's data or the recorded data), checked against the checkpoint and ``--output``.

    :returns: ``(splits, data specification, task or None)``.
    """
    recorded = record.get("metadata", {}).get("data")
    if args.split not in (None, "test") and args.test_file:
        raise UsageError(
            "--split names a split of the recorded data, --task or --dataset; with --test-file leave it out"
        )
    args.split = evaluation_split(args, recorded)
    splits, data_spec = resolve_data(args, (args.split,), label_names=label_names, recorded=recorded)
    check_evaluation_inputs(args, output, directory, record, data_spec)
    return splits, data_spec, task_of(args, data_spec)


def _predict(args, predictive, tokenizer, data, num_samples: int, max_length: int, device):
    """The checkpoint's method's predictive on ``data``, seeded with ``--seed``, under ``--dtype``.

    :returns: ``(PredictiveOutput, seconds it took)``.
    """
    import pyro

    from pyro_monteclora.data.classification import classification_loader
    from pyro_monteclora.nn.precision import autocast

    loader = classification_loader(data, tokenizer, args.batch_size or CLASSIFIER_BATCH_SIZE, max_length)
    pyro.set_rng_seed(args.seed)
    started = time.perf_counter()
    with autocast(device, args.torch_dtype):
        result = predictive(loader, num_samples, progress=True)
    return result, time.perf_counter() - started
