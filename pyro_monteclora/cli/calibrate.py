"""``pyro-monteclora calibrate``: post-hoc calibration of a trained checkpoint, into a new folder.

``--temperature`` fits one temperature on the validation split with the checkpoint's own
predictive (any method: LoRA, MonteCLoRA, an ensemble, ...); ``--laplace`` fits Laplace-LoRA (a
Kronecker-factored Laplace approximation over the adapters, through ``laplace-torch``) on the
training split of a LoRA checkpoint, and the new checkpoint predicts with its GLM predictive. Both
together fit the temperature on top of the Laplace predictive. The data are the checkpoint's
recorded data (their SHA-256 is checked) unless the command line names other files.

The source is left as it is: ``--output`` receives a copy of its model (without the training
state) with ``calibration.json`` and/or ``laplace.safetensors`` + ``laplace.json`` beside it, written
to a temporary folder and renamed into place. ``evaluate`` and ``predict`` read it like any checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from pyro_monteclora.cli.checkpoints import (
    CLASSIFIER_BATCH_SIZE,
    add_inference_options,
    load_for_inference,
    open_model,
    record_method,
    recorded_label_names,
)
from pyro_monteclora.cli.options import UsageError, add_data_options
from pyro_monteclora.cli.outputs import check_inputs_outside, check_replaceable
from pyro_monteclora.cli.sources import evaluation_split, resolve_data

__all__ = ["add_calibrate_parser", "run_calibrate"]

#: what a calibrated copy leaves out of its source: the training state and the fits it replaces
_TRAINING_STATE = ("training_state.json", "training_state.safetensors", "calibration.json")
_LAPLACE_FILES = ("laplace.json", "laplace.safetensors")
_LEFT_OUT = (
    "training_state.json",
    "training_state.safetensors",
    "calibration.json",
    "laplace.json",
    "laplace.safetensors",
)


def add_calibrate_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``calibrate`` sub-command."""
    parser = subparsers.add_parser(
        "calibrate",
        help="fit a temperature (any checkpoint) or Laplace-LoRA (a LoRA checkpoint) after training",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_inference_options(parser)
    add_data_options(parser, ("train", "validation"))
    group = parser.add_argument_group("calibration")
    group.add_argument("--temperature", action="store_true", help="fit a temperature on the validation split")
    group.add_argument(
        "--laplace", action="store_true", help="fit Laplace-LoRA on the training split (LoRA checkpoints only)"
    )
    group.add_argument("--output", required=True, help="the calibrated checkpoint's folder")
    group.add_argument("--overwrite", action="store_true", help="replace an existing calibrated checkpoint")
    parser.set_defaults(handler=run_calibrate)
    return parser


def _check(args, directory: Path, record: dict) -> str:
    if not (args.temperature or args.laplace):
        raise UsageError("calibrate needs --temperature, --laplace or both")
    method = record_method(record)
    if args.laplace and method != "lora":
        raise UsageError(
            f"--laplace: Laplace-LoRA applies to a LoRA checkpoint (method lora); {directory} holds a "
            f"{method} checkpoint"
        )
    return "laplace" if args.laplace else method


def run_calibrate(args, parser_defaults: dict) -> int:
    """Validate everything, then write the calibrated checkpoint; returns 0."""
    from pyro_monteclora.cli.baselines import fit_temperature_into
    from pyro_monteclora.data.classification import classification_loader
    from pyro_monteclora.storage.atomic import atomic_directory, atomic_write_json
    from pyro_monteclora.storage.checkpoint import CONFIG_NAME

    directory, record, device = load_for_inference(args)
    method = _check(args, directory, record)
    needed = (["train"] if args.laplace else []) + (["validation"] if args.temperature else [])
    metadata = record.get("metadata") or {}
    splits, data_spec = resolve_data(
        args, tuple(needed), label_names=recorded_label_names(record), recorded=metadata.get("data")
    )
    limit = (metadata.get("arguments") or {}).get("max_train_samples")
    if "train" in splits and limit and args.train_file is None:  # the training set the run saw
        splits["train"] = splits["train"].subset(limit)
    if args.temperature and evaluation_split(args, metadata.get("data")) != "test":
        raise UsageError(
            "--temperature fits on the validation split, which is also the split this data is evaluated on "
            "(it has no labelled test split); give the data a test split first"
        )
    output = Path(args.output)
    check_replaceable(output, args.overwrite, CONFIG_NAME, "pyro-monteclora checkpoint")
    files = (data_spec or {}).get("files") or {}
    check_inputs_outside(output, [("--checkpoint", directory), *((f"the {k} data", v) for k, v in files.items())])
    model, guide, tokenizer = open_model(directory, record, args, device)
    max_length = metadata.get("max_length", 128)

    def loader(split):
        return classification_loader(splits[split], tokenizer, args.batch_size or CLASSIFIER_BATCH_SIZE, max_length)

    left_out = _TRAINING_STATE + (_LAPLACE_FILES if args.laplace else ())
    updated = dict(record, metadata=dict(metadata, method=method, calibrated_from=str(directory)))
    with atomic_directory(output) as staging:
        for item in directory.iterdir():
            if item.is_file() and item.name not in left_out:
                shutil.copy2(item, staging / item.name)
        atomic_write_json(staging / CONFIG_NAME, updated)
        if args.laplace:
            from pyro_monteclora.infer.laplace import fit_laplace

            print("calibrate: fitting Laplace-LoRA on the training split", file=sys.stderr)
            fit_laplace(model, loader("train"), progress=True).save(staging)
        if args.temperature:
            try:
                fit_temperature_into(
                    staging, model, guide, method, loader("validation"), args.seed, device, args.num_samples
                )
            except ValueError as error:  # a checkpoint whose predictive cannot be built (a missing fit)
                raise UsageError(f"--checkpoint {directory}: {error}") from None
    print(f"wrote {output}", file=sys.stderr)
    return 0
