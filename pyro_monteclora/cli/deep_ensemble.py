"""``train --method deep-ensemble`` and the ``ensemble`` command.

* ``deep-ensemble`` trains ``--ensemble-size`` :math:`M` LoRA runs, seeds ``--seed`` + 0 .. M-1,
  each a complete run folder in ``<output>/members/<k>/`` (each resumes on its own), then writes
  ``<output>/checkpoint/``: the first member's model with every member's tensors beside it
  (:func:`train_deep_ensemble`, :func:`run_deep_ensemble`).
* ``pyro-monteclora ensemble --members RUN,RUN,... --output DIR`` assembles a deep ensemble from runs
  trained separately (on several machines, say); they must share the base model, the label set, the
  method and the adapter configuration (:func:`run_ensemble`).
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import List, Sequence

from pyro_monteclora.cli.baselines import ensemble_size
from pyro_monteclora.cli.options import UsageError
from pyro_monteclora.cli.outputs import lock_output_folder
from pyro_monteclora.cli.runs import CHECKPOINT_DIR, RUN_FILE, SUMMARY_FILE, latest_checkpoint

__all__ = ["train_deep_ensemble", "run_deep_ensemble", "assemble_ensemble", "add_ensemble_parser", "run_ensemble"]

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


def train_deep_ensemble(job, parser_defaults: dict, train_member, write_run_record) -> int:
    """``--method deep-ensemble``: its members are LoRA runs in ``<output>/members/<k>/`` (see
    the module docstring), trained one after the other with ``train_member(member_args,
    parser_defaults)`` (``train``'s own entry point) under the output's lock, after
    ``write_run_record(job)`` has written the ensemble's run record.

    :param job: the ``train`` command's validated job (its arguments, data, device and output).
    """
    from pyro_monteclora.cli.baselines import finish_training

    args, arguments, output, device = job.args, job.arguments, job.output, job.device
    lock = lock_output_folder(output, args, RUN_FILE, "pyro-monteclora run")
    try:
        write_run_record(job)
        started = time.perf_counter()

        def finish(checkpoint: Path) -> None:
            if arguments.get("calibrate", "none") != "none":
                from transformers import AutoTokenizer

                from pyro_monteclora.storage.checkpoint import load_pretrained

                model, guide = load_pretrained(checkpoint, device=device)
                finish_training(
                    replace(job, model=model, guide=guide, tokenizer=AutoTokenizer.from_pretrained(checkpoint)),
                    checkpoint,
                )

        status = run_deep_ensemble(args, parser_defaults, arguments, train_member, finish)
        from pyro_monteclora.storage.atomic import atomic_write_json

        atomic_write_json(
            output / "train_summary.json",
            {
                "method": "deep-ensemble",
                "members": arguments.get("ensemble_size") or 5,
                "train_seconds": sum(
                    json.loads((path / "train_summary.json").read_text())["train_seconds"]
                    for path in sorted((output / "members").iterdir())
                    if (path / "train_summary.json").is_file()
                ),
                "wall_seconds_this_session": time.perf_counter() - started,
            },
        )
        print(f"wrote {output / CHECKPOINT_DIR}", file=sys.stderr)
        return status
    finally:
        lock.release()


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
