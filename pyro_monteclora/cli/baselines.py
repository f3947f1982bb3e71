"""What ``train`` does differently for the calibration baselines, and the ``ensemble`` command.

* ``--method mc-dropout``, ``laplace``, ``checkpoint-ensemble``, ``deep-ensemble`` train plain
  LoRA; ``blob`` trains a mean-field Gaussian over :math:`A` (:mod:`pyro_monteclora.infer.guides`).
* ``checkpoint-ensemble`` keeps the trained tensors of the last ``--ensemble-size`` :math:`K`
  epochs in the checkpoint (``ensemble.safetensors``), so ``--resume`` keeps them too.
* ``deep-ensemble`` trains ``--ensemble-size`` :math:`M` LoRA runs, seeds ``--seed`` + 0 .. M-1,
  each a complete run folder in ``<output>/members/<k>/`` (each resumes on its own), then writes
  ``<output>/checkpoint/``: the first member's model with every member's tensors beside it.
* ``laplace`` fits Laplace-LoRA on the training split once training ends
  (``laplace.safetensors`` + ``laplace.json`` in the checkpoint).
* ``--calibrate temperature`` fits a temperature on the validation split with the method's own
  predictive, once training ends (``calibration.json`` in the checkpoint).

``pyro-monteclora ensemble --members RUN,RUN,... --output DIR`` assembles a deep ensemble from runs
trained separately (on several machines, say); they must share the base model, the label set, the
method and the adapter configuration.
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from pyro_monteclora.cli.options import UsageError
from pyro_monteclora.cli.runs import CHECKPOINT_DIR, RUN_FILE, SUMMARY_FILE, latest_checkpoint
from pyro_monteclora.infer.methods import ENSEMBLE_METHODS, default_num_samples

__all__ = [
    "ENSEMBLE_DEFAULTS",
    "LORA_BASED",
    "check_method_options",
    "ensemble_size",
    "keep_epoch_member",
    "finish_training",
    "run_deep_ensemble",
    "assemble_ensemble",
    "add_ensemble_parser",
    "run_ensemble",
    "fit_temperature_into",
]

#: ``--ensemble-size`` when not given: M = 5 members (deep), the last K = 3 epochs (checkpoint)
ENSEMBLE_DEFAULTS = {"deep-ensemble": 5, "checkpoint-ensemble": 3}
#: methods that train plain LoRA (their difference is in the predictive)
LORA_BASED = ("lora", "mc-dropout", "laplace", "checkpoint-ensemble", "deep-ensemble")
MEMBERS_DIR = "members"
#: files of a member's checkpoint that the ensemble's checkpoint does not take over: its training
#: state, and fits of that member alone (a temperature, Laplace, members of its own)
_TRAINING_FILES = (
    "training_state.json",
    "training_state.safetensors",
    "calibration.json",
    "laplace.json",
    "laplace.safetensors",
    "ensemble.json",
    "ensemble.safetensors",
)


def ensemble_size(arguments: dict) -> int:
    """``--ensemble-size``, else the method's default (:data:`ENSEMBLE_DEFAULTS`)."""
    return arguments.get("ensemble_size") or ENSEMBLE_DEFAULTS[arguments["method"]]


def check_method_options(
    arguments: dict, causal: bool, splits: dict, world_size: int, evaluation_split: Optional[str] = None
) -> None:
    """Refuse, before any work, a baseline option that cannot apply (one line, exit 2)."""
    method = arguments["method"]
    calibrate = arguments.get("calibrate", "none") != "none"
    if causal and method not in ("monteclora", "lora", "full"):
        raise UsageError(f"--method {method} is for sequence classification; causal-lm takes monteclora, lora or full")
    if causal and calibrate:
        raise UsageError("--calibrate temperature is for sequence classification, not causal-lm")
    if world_size > 1 and (method == "laplace" or calibrate):
        raise UsageError(
            f"{'--method laplace' if method == 'laplace' else '--calibrate temperature'} fits on the whole split "
            f"in one process; launched with {world_size}, train without it and run 'pyro-monteclora calibrate' "
            f"on the checkpoint afterwards"
        )
    if arguments.get("ensemble_size") is not None and method not in ENSEMBLE_METHODS:
        raise UsageError(f"--ensemble-size applies to --method deep-ensemble or checkpoint-ensemble, not {method}")
    if method == "checkpoint-ensemble" and ensemble_size(arguments) > arguments["epochs"]:
        raise UsageError(
            f"--ensemble-size {ensemble_size(arguments)} is more than --epochs {arguments['epochs']}: a "
            f"checkpoint ensemble takes the last K epochs of one run"
        )
    if method == "mc-dropout" and not (arguments.get("lora_dropout") or 0) > 0:
        raise UsageError("--method mc-dropout needs --lora-dropout above 0 (for example 0.1): the masks are the draws")
    if method == "deep-ensemble" and world_size > 1:
        raise UsageError(
            "--method deep-ensemble trains its members one after the other in one process; launched "
            "with several processes, train the members as separate lora runs and join them with "
            "'pyro-monteclora ensemble'"
        )
    if calibrate and "validation" not in splits:
        raise UsageError(
            "--calibrate temperature fits the temperature on the validation split, and this data has "
            "none: give --validation-file (or a --task/--dataset with a validation split)"
        )
    if calibrate and evaluation_split is not None and evaluation_split != "test":
        raise UsageError(
            "--calibrate temperature fits on the validation split, which is also the split this data is "
            "evaluated on (it has no labelled test split): give --test-file, so the temperature never sees "
            "the examples it is scored on"
        )


def keep_epoch_member(staging: Path, previous: Path, tensors: dict, epoch: int, size: int) -> None:
    """Write into the checkpoint being staged the ensemble of the last ``size`` epochs: those kept
    in the ``previous`` checkpoint (if any) and this epoch's ``tensors``."""
    from pyro_monteclora.storage.ensembles import read_ensemble_members, save_ensemble_members

    saved = read_ensemble_members(previous) if previous is not None and previous.is_dir() else None
    details, members = (list(saved[1]), list(saved[2])) if saved else ([], [])
    details, members = details + [{"epoch": epoch}], members + [tensors]
    save_ensemble_members(staging, members[-size:], "checkpoint", details[-size:])


def finish_training(job, checkpoint: Path) -> None:
    """After the last epoch, on rank 0: fit Laplace-LoRA (``laplace``) and the temperature
    (``--calibrate temperature``) into ``checkpoint``."""
    arguments = job.arguments
    if arguments["method"] == "laplace":
        _fit_laplace(job, checkpoint)
    if arguments.get("calibrate", "none") == "temperature":
        loader = _evaluation_loader(job, "validation")
        fit_temperature_into(
            checkpoint, job.model, job.guide, arguments["method"], loader, arguments["seed"], job.device
        )


def _evaluation_loader(job, split: str):
    from pyro_monteclora.data.classification import classification_loader

    return classification_loader(job.splits[split], job.tokenizer, 64, job.max_length)


def _fit_laplace(job, checkpoint: Path) -> None:
    from pyro_monteclora.infer.laplace import fit_laplace

    print("laplace: fitting the Kronecker-factored Laplace approximation on the training split", file=sys.stderr)
    laplace = fit_laplace(job.model, _evaluation_loader(job, "train"), progress=True)
    laplace.save(checkpoint)


def fit_temperature_into(checkpoint: Path, model, guide, method: str, loader, seed: int, device, num_samples=None):
    """Fit a temperature on ``loader`` (the validation split) with ``method``'s own predictive of
    the checkpoint, write ``calibration.json`` into it, and return the temperature."""
    import pyro

    from pyro_monteclora.infer.methods import method_predictive
    from pyro_monteclora.infer.temperature import fit_temperature, tempered_nll
    from pyro_monteclora.storage.calibration import save_calibration

    predictive = method_predictive(model, guide, method, checkpoint, calibration=False)
    num_samples = default_num_samples(method) if num_samples is None else num_samples
    pyro.set_rng_seed(seed)
    output = predictive(loader, num_samples, device=device, progress=True)
    if output.labels is None:
        raise UsageError("the validation split has no labels: a temperature is fitted on labelled examples")
    temperature = fit_temperature(output.probs, output.labels)
    save_calibration(
        checkpoint,
        temperature,
        {
            "fitted_on": "validation",
            "examples": int(output.labels.numel()),
            "num_samples": num_samples,
            "nll_before": tempered_nll(output.probs, output.labels, 1.0),
            "nll_after": tempered_nll(output.probs, output.labels, temperature),
        },
    )
    print(
        f"calibrate: temperature {temperature:.3f} fitted on {output.labels.numel():,} validation examples",
        file=sys.stderr,
    )
    return temperature


# -- deep ensembles --------------------------------------------------------------------------------
def _member_arguments(args, arguments: dict, output: Path, index: int) -> argparse.Namespace:
    member = copy.copy(args)
    for name, value in arguments.items():
        setattr(member, name, value)
    member.method = "lora"
    member.seed = arguments["seed"] + index
    member.ensemble_size = None
    member.calibrate = "none"
    member.output = str(output / MEMBERS_DIR / str(index))
    member.command_line = list(args.command_line) + [f"(member {index}: --method lora --seed {member.seed})"]
    folder = Path(member.output)
    finished = (folder / SUMMARY_FILE).is_file() and latest_checkpoint(folder) is not None
    member.resume = (folder / RUN_FILE).is_file() and latest_checkpoint(folder) is not None and not finished
    member.overwrite = not member.resume
    member.skip = finished
    return member


def run_deep_ensemble(args, parser_defaults: dict, arguments: dict, train_member, finish) -> int:
    """Train (or resume) the members one by one with ``train_member(member_args, parser_defaults)``,
    then assemble ``<output>/checkpoint/`` and call ``finish(checkpoint)``."""
    output = Path(args.output)
    size = ensemble_size(arguments)
    folders: List[Path] = []
    for index in range(size):
        member = _member_arguments(args, arguments, output, index)
        if member.skip:
            print(f"deep-ensemble: member {index + 1}/{size} is already trained", file=sys.stderr)
        else:
            print(f"deep-ensemble: member {index + 1}/{size} (seed {member.seed})", file=sys.stderr)
            train_member(member, parser_defaults)
        folders.append(latest_checkpoint(Path(member.output)))
    checkpoint = output / CHECKPOINT_DIR
    assemble_ensemble(folders, checkpoint, [{"seed": arguments["seed"] + k} for k in range(size)], arguments)
    finish(checkpoint)
    return 0


def _member_record(folder: Path) -> dict:
    from pyro_monteclora.storage.checkpoint import CheckpointError, read_saved_config

    try:
        return read_saved_config(folder)
    except CheckpointError as error:
        raise UsageError(str(error)) from None


def _same_kind(records: Sequence[dict], folders: Sequence[Path]) -> None:
    """Members of one ensemble share the base, the labels, the model class, the config and the guide."""
    first = records[0]

    def key(record):
        metadata = record.get("metadata") or {}
        base = record["base_model"]
        return {
            "the base model": (base.get("name_or_path"), base.get("architecture"), base.get("fingerprint")),
            "the label set": ((metadata.get("data") or {}).get("label_names"), base.get("num_labels")),
            "the method": metadata.get("method", record["model_class"]),
            "the adapter configuration": (record["model_class"], record["adapter_mode"], record["config"]),
            "the guide": record["guide"],
            "the trained tensors": record["tensors"],
        }

    reference = key(first)
    for record, folder in zip(records[1:], folders[1:]):
        for what, value in key(record).items():
            if value != reference[what]:
                raise UsageError(
                    f"--members: {folder} and {folders[0]} differ in {what}; the members of an ensemble "
                    f"must be trained on one base model and label set with one method"
                )


def assemble_ensemble(folders: Sequence[Path], checkpoint: Path, details: Sequence[dict], arguments=None) -> None:
    """Write ``checkpoint`` (atomically): the first member's checkpoint (its training state left
    out), marked ``deep-ensemble``, with every member's trained tensors beside it."""
    from pyro_monteclora.storage.atomic import atomic_directory, atomic_write_json
    from pyro_monteclora.storage.checkpoint import CONFIG_NAME, CheckpointError, read_trained_tensors
    from pyro_monteclora.storage.ensembles import save_ensemble_members

    records = [_member_record(folder) for folder in folders]
    _same_kind(records, folders)
    try:
        members = [read_trained_tensors(folder) for folder in folders]
    except CheckpointError as error:
        raise UsageError(f"--members: {error}") from None
    record = copy.deepcopy(records[0])
    metadata = record.setdefault("metadata", {})
    metadata["method"] = "deep-ensemble"
    metadata["members"] = [str(folder) for folder in folders]
    if arguments is not None:
        metadata["arguments"] = arguments
    with atomic_directory(checkpoint) as staging:
        for item in folders[0].iterdir():
            if item.is_file() and item.name not in _TRAINING_FILES:
                shutil.copy2(item, staging / item.name)
        atomic_write_json(staging / CONFIG_NAME, record)
        save_ensemble_members(staging, members, "deep", details)


# -- the ensemble command ----------------------------------------------------------------------------
def add_ensemble_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``ensemble`` sub-command."""
    parser = subparsers.add_parser(
        "ensemble",
        help="join separately trained runs into one deep-ensemble checkpoint",
        description="Join runs (or their checkpoints) trained with one method on one base model and label "
        "set into a deep-ensemble checkpoint that evaluate and predict read as one predictive.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--members", required=True, help="comma-separated run folders or checkpoint folders")
    parser.add_argument("--output", required=True, help="the ensemble's checkpoint folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing ensemble checkpoint")
    parser.set_defaults(handler=run_ensemble)
    return parser


def _member_folder(text: str) -> Path:
    path = Path(text)
    if (path / RUN_FILE).is_file():
        found = latest_checkpoint(path)
        if found is None:
            raise UsageError(f"--members: the run {path} has no finished epoch")
        return found
    if not (path / "monteclora_config.json").is_file():
        raise UsageError(f"--members: {path} is neither a run folder nor a checkpoint folder")
    return path


def run_ensemble(args, parser_defaults: dict) -> int:
    """Validate the members, then write the ensemble checkpoint; returns 0."""
    from pyro_monteclora.cli.outputs import check_inputs_outside, check_replaceable

    names = [name.strip() for name in args.members.split(",") if name.strip()]
    if not names:
        raise UsageError("--members must name at least 1 run, got none")
    folders = [_member_folder(name) for name in names]
    if len({folder.resolve() for folder in folders}) != len(folders):
        raise UsageError("--members names one run twice; an ensemble's members are distinct runs")
    output = Path(args.output)
    check_replaceable(output, args.overwrite, "ensemble.json", "pyro-monteclora ensemble")
    check_inputs_outside(output, [("--members", folder) for folder in folders])
    records = [_member_record(folder) for folder in folders]
    _same_kind(records, folders)
    methods = {(record.get("metadata") or {}).get("method", "lora") for record in records}
    if methods - {"lora", "monteclora", "blob", "full"}:
        raise UsageError(
            f"--members: runs of method {sorted(methods)[0]} cannot be members; "
            f"use lora (or monteclora, blob, full) runs"
        )
    seeds = [((record.get("metadata") or {}).get("arguments") or {}).get("seed") for record in records]
    assemble_ensemble(folders, output, [{"seed": seed, "run": str(folder)} for seed, folder in zip(seeds, folders)])
    print(f"wrote {output}: a deep ensemble of {len(folders)} members", file=sys.stderr)
    return 0
