"""The layout of a run folder, in one place: what ``train`` writes and what ``train --resume``,
``evaluate``, ``predict``, ``generate`` and ``sweep`` look for.

.. code-block:: text

    <output>/run.json              the run's arguments, data, model path, processes, versions
    <output>/checkpoint/           the last finished epoch (model + guide + training state)
    <output>/checkpoint.old/       the epoch before it, while the next one is being swapped in
    <output>/train_summary.json    written when training ends

and what ``--resume`` reads back of a run: its recorded options (:data:`RUN_OPTIONS`, each checked
by the same rule as when it was typed: :data:`RUN_CHECKS`, or the config for the adapter options)
and the checkpoint's training state.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from pyro_monteclora.cli.options import (
    MAX_SEED,
    METHODS,
    TASKS,
    UsageError,
    adapter_dests,
    check_adapter_options,
    check_values,
)
from pyro_monteclora.quantization import QUANTIZE_CHOICES

__all__ = [
    "RUN_FILE",
    "CHECKPOINT_DIR",
    "CHECKPOINT_DIRS",
    "STATE_FILE",
    "SUMMARY_FILE",
    "latest_checkpoint",
    "checkpoint_candidates",
    "is_inside_checkpoint",
    "RUN_OPTIONS",
    "RUN_CHECKS",
    "TASK_TYPES",
    "CALIBRATIONS",
    "option_name",
    "read_run",
    "read_resume_state",
    "fit_parameters",
]

RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoint"
#: the checkpoint, then its predecessor kept during an atomic swap
CHECKPOINT_DIRS = (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old")
STATE_FILE = "training_state.json"
SUMMARY_FILE = "train_summary.json"


def checkpoint_candidates(run: Path):
    """The folders of ``run`` that may hold its latest checkpoint, newest first."""
    return [run / name for name in CHECKPOINT_DIRS]


def latest_checkpoint(run: Path) -> Optional[Path]:
    """The newest checkpoint of ``run`` with a training state (a finished epoch), or ``None``."""
    return next((folder for folder in checkpoint_candidates(run) if (folder / STATE_FILE).is_file()), None)


def is_inside_checkpoint(path: Path) -> Optional[Path]:
    """The run's checkpoint folder that ``path`` is, or lies inside, else ``None``."""
    for folder in (path, *path.parents):
        if folder.name in CHECKPOINT_DIRS and (folder.parent / RUN_FILE).is_file():
            return folder
    return None


#: options that define a run; ``--resume`` refuses a command line that changes one of them (the
#: adapter options are one per MonteCLoRAConfig field: :func:`~.options.adapter_dests`)
RUN_OPTIONS = (
    "method",
    "task_type",
    "model",
    "task",
    "split_seed",
    "train_file",
    "validation_file",
    "test_file",
    "text_column",
    "label_column",
    "prompt_column",
    "response_column",
    "dataset",
    "dataset_config",
    "max_length",
    "quantize",
    *adapter_dests(),
    "learning_rate",
    "batch_size",
    "epochs",
    "weight_decay",
    "warmup_ratio",
    "max_train_samples",
    "seed",
    "eval_num_samples",
    "no_validation",
    "ensemble_size",
    "calibrate",
)


TASK_TYPES = ("sequence-classification", "causal-lm")
#: ``train --calibrate``: nothing, or a temperature fitted on the validation split
CALIBRATIONS = ("none", "temperature")


_TEXT = {"kind": "text", "nullable": True}


#: what each run option may be. The command line (``--batch-size 0``) and the arguments that
#: ``--resume`` reads back from run.json go through this one table (:func:`check_values`), so a
#: value refused when typed is refused when read back. ``default``: for runs recorded before the
#: option existed. The adapter options are checked by the config itself (typed or read back:
#: :func:`~.options.check_adapter_options`), so they have no row here.
RUN_CHECKS = {
    "method": {"kind": METHODS},
    "task_type": {"kind": TASK_TYPES, "default": TASK_TYPES[0]},
    "model": _TEXT,
    "task": {"kind": TASKS, "nullable": True},
    "split_seed": {"kind": "integer", "minimum": 0, "maximum": MAX_SEED},
    "train_file": _TEXT,
    "validation_file": _TEXT,
    "test_file": _TEXT,
    "text_column": {"kind": "texts", "nullable": True},
    "label_column": _TEXT,
    "prompt_column": dict(_TEXT, default=None),
    "response_column": dict(_TEXT, default=None),
    "dataset": _TEXT,
    "dataset_config": _TEXT,
    "max_length": {"kind": "integer", "minimum": 2, "nullable": True},
    "quantize": {"kind": QUANTIZE_CHOICES, "nullable": True, "default": None},
    "learning_rate": {"kind": "number", "minimum": 0, "exclusive_minimum": True, "nullable": True},
    "batch_size": {"kind": "integer", "minimum": 1},
    "epochs": {"kind": "integer", "minimum": 1},
    "weight_decay": {"kind": "number", "minimum": 0},
    "warmup_ratio": {"kind": "number", "minimum": 0, "maximum": 0.99},
    "max_train_samples": {"kind": "integer", "minimum": 1, "nullable": True},
    "seed": {"kind": "integer", "minimum": 0, "maximum": MAX_SEED},
    "eval_num_samples": {"kind": "integer", "minimum": 0},
    "no_validation": {"kind": "flag"},
    "ensemble_size": {"kind": "integer", "minimum": 1, "nullable": True, "default": None},
    "calibrate": {"kind": CALIBRATIONS, "default": "none"},
}


def option_name(key: str) -> str:
    return "--" + key.replace("_", "-")


def read_run(run_file: Path):
    """``run.json``'s arguments (checked with :data:`RUN_CHECKS`, the command line's own rules),
    data specification and process count; any bad field is a usage error naming it."""
    from pyro_monteclora.cli.sources import check_data_spec
    from pyro_monteclora.validation import FieldError, get_field, parse_json

    try:
        run = parse_json(run_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UsageError(f"--resume: {run_file} is not a readable run record ({error})") from None
    try:
        saved = get_field(run, "arguments", "arguments", "object")
        recorded = get_field(run, "data", "data", "object")
        model_path = get_field(run, "model_path", "model_path", "text")
        processes = get_field(run, "processes", "processes", "integer", minimum=1, default=1)
    except FieldError as error:
        raise UsageError(f"--resume: {run_file}: {error}") from None
    saved = check_values(saved, RUN_CHECKS, lambda key: f"--resume: {run_file}: arguments.{key}", read_back=True)
    try:
        check_adapter_options(argparse.Namespace(**saved))
    except UsageError as error:
        raise UsageError(f"--resume: {run_file}: {error}") from None
    check_data_spec(recorded, f"--resume: {run_file}: data")
    saved["model"] = model_path  # as resolved when the run started
    return saved, recorded, processes


def read_resume_state(checkpoint: Path, arguments: dict, output: Path):
    """The checkpoint's training state, checked field by field and against the run's epochs."""
    from pyro_monteclora.storage.checkpoint import CheckpointError
    from pyro_monteclora.training.state import STATE_JSON, load_training_state

    try:
        state = load_training_state(checkpoint)
    except CheckpointError as error:
        raise UsageError(f"--resume: {error}") from None
    if state.epoch > arguments["epochs"]:
        raise UsageError(
            f"--resume: {output / RUN_FILE}: arguments.epochs is {arguments['epochs']}, "
            f"fewer than the {state.epoch} epoch(s) {checkpoint / STATE_JSON} has finished"
        )
    return state


def fit_parameters(model, guide) -> list:
    """The tensors :func:`~pyro_monteclora.fit` optimises, in its order: the trainable parameters of
    Pyro's ELBO module over ``(model, guide)``."""
    import pyro

    return [p for p in pyro.infer.Trace_ELBO()(model, guide).parameters() if p.requires_grad]
