"""Options shared by the commands, their validation, and where the data and the model come from.

Everything here runs before any work: a bad option or bad data raises :class:`UsageError`, which
``main`` prints as one line on stderr before exiting with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import typing
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from safetensors import SafetensorError

from pyro_monteclora.validation import MAX_SEED, FieldError, check_value, number_problem, shown

__all__ = [
    "UsageError",
    "OneLineParser",
    "add_model_options",
    "add_data_options",
    "add_adapter_options",
    "adapter_dests",
    "adapter_config",
    "check_adapter_options",
    "option_message",
    "check_number",
    "check_seed",
    "check_values",
    "check_data_spec",
    "MAX_SEED",
    "LOAD_ERRORS",
    "load_error",
    "resolve_data",
    "recorded_file",
    "resolve_model_path",
    "resolve_device",
    "check_writable",
    "existing_output",
    "check_output_folder",
    "check_replaceable",
    "check_training_labels",
    "lock_output_folder",
    "check_inputs_outside",
    "run_inputs",
    "check_file_output_not_input",
    "check_distinct_outputs",
    "data_mode",
    "task_of",
    "evaluation_split",
    "file_sha256",
    "add_dtype_option",
    "resolve_precision",
    "TASKS",
    "METHODS",
    "ADAPTER_OPTION_OVERRIDES",
]

from pyro_monteclora.config import MonteCLoRAConfig
from pyro_monteclora.data.tasks import TASKS as TASK_SPECS

TASKS = tuple(TASK_SPECS)
METHODS = ("monteclora", "lora", "full")
#: where an adapter option differs from its :class:`~pyro_monteclora.config.MonteCLoRAConfig`
#: field (every other option is ``--<field-with-dashes>`` with the field's type, default and help):
#: its ``name``, extra ``aliases``, and the command line's own ``default`` and ``help``. The layers
#: to adapt and the point-estimate modules default to what the base model needs
#: (:mod:`pyro_monteclora.hf_defaults`), and both are comma-separated lists.
ADAPTER_OPTION_OVERRIDES: Mapping[str, Mapping[str, object]] = {
    "dropout": {"name": "lora-dropout"},
    "random_B": {"aliases": ("--random-b",)},
    "target_modules": {
        "default": None,
        "help": "comma-separated names of the linear layers to adapt (default: by the model type, "
        "query,value for BERT; see pyro_monteclora.hf_defaults)",
    },
    "modules_to_save": {
        "default": None,
        "help": "comma-separated modules trained as point estimates in addition to the "
        "classification head and the weights the base model lacks (always trained)",
    },
}
#: what ``from_pretrained`` raises for model files that are not right (a damaged config.json, a
#: pickle named model.safetensors): each becomes one line naming the folder. Tokenizer loads
#: catch ``Exception``: the tokenizers library raises a bare one for a tokenizer.json it cannot read.
LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, SafetensorError)
_NO_DEFAULT = object()


class UsageError(Exception):
    """A bad command line or bad input: printed as one line, exit status 2, nothing written."""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage dump) and raise :class:`UsageError`."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: error: {message}")


def check_number(
    name: str, value, minimum=None, maximum=None, integer: bool = False, exclusive_minimum: bool = False
) -> None:
    """Raise :class:`UsageError` unless ``value`` is finite and in range; ``name`` is the option.
    The rule is :func:`~pyro_monteclora.validation.number_problem`'s, which also checks the values
    read back from a run's files."""
    if value is None:
        return
    problem = number_problem(value, minimum, maximum, integer, exclusive_minimum)
    if problem:
        raise UsageError(f"{name} {problem}")


def check_seed(name: str, value) -> None:
    """A seed: an integer in ``[0, 2**32 - 1]`` (NumPy's generator refuses anything else)."""
    check_number(name, value, minimum=0, maximum=MAX_SEED, integer=True)


def check_values(values: dict, rules: Dict[str, dict], name_of: Callable[[str], str], read_back: bool = False) -> dict:
    """Check each of ``values`` that ``rules`` names with :func:`~pyro_monteclora.validation.check_value`
    (a rule is its keyword arguments: ``{"kind": "integer", "minimum": 1}``, optionally
    ``"nullable"`` and, for files written before the option existed, ``"default"``).

    The command line and a run's recorded arguments go through the same rules, so a value refused
    when typed is refused when read back. ``name_of(key)`` is the field in the message
    (``--batch-size``, ``run.json: arguments.batch_size``).

    :param read_back: a key missing from ``values`` is an error, unless its rule has a default.
    :returns: ``values`` with the defaults of missing keys filled in.
    """
    values = dict(values)
    for key, rule in rules.items():
        rule = dict(rule)
        default = rule.pop("default", _NO_DEFAULT)
        try:
            if key not in values:
                if read_back and default is _NO_DEFAULT:
                    raise FieldError(f"{name_of(key)} is missing")
                values[key] = None if default is _NO_DEFAULT else default
                continue
            check_value(name_of(key), values[key], **rule)
        except FieldError as error:
            raise UsageError(str(error)) from None
    return values


def load_error(error: BaseException) -> str:
    """One line for an error of :data:`LOAD_ERRORS`: a safetensors error says what it is (its
    message alone, "header too large", does not)."""
    text = f"{error}".splitlines()[0] if f"{error}".strip() else type(error).__name__
    if isinstance(error, SafetensorError):
        return f"a .safetensors file there is not valid safetensors (a pickle renamed, a truncated file?): {text}"
    return text


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--trust-remote-code`` and ``--device``."""
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        default=None,
        help="HF model folder, hub name or .gguf file (default: the packaged "
        "all-MiniLM-L6-v2; SmolLM2-135M-Instruct with --task-type causal-lm)",
    )
    group.add_argument(
        "--trust-remote-code", action="store_true", help="allow model code from the hub (off by default)"
    )
    group.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to run (auto: CUDA when available)"
    )
    add_dtype_option(group)


def add_dtype_option(parser) -> None:
    """``--dtype fp32|bf16|fp16``: the frozen base's precision (adapters and sampler stay fp32)."""
    parser.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="precision of the frozen base, run under autocast; adapters, head, "
        "guide and sampler stay fp32 (fp16 needs CUDA)",
    )


def resolve_precision(name: str, device):
    """The torch dtype of ``--dtype`` on ``device``; one the device cannot run is a usage error."""
    from pyro_monteclora.nn.precision import check_precision

    try:
        return check_precision(name, device)
    except ValueError as error:
        raise UsageError(f"--dtype {name}: {error}") from None


def add_data_options(parser: argparse.ArgumentParser, splits: Sequence[str]) -> None:
    """The data source options, with a ``--<split>-file`` for each of ``splits``."""
    group = parser.add_argument_group("data (default: --task rotten-tomatoes)")
    group.add_argument(
        "--task",
        default=None,
        choices=TASKS,
        help="rotten-tomatoes: the built-in 12,808 critic sentences, split 80/10/10 "
        "with --split-seed; the paper's tasks (GLUE/SuperGLUE, commonsense, "
        "gsm8k) read --*-file files of their schema, or the hub when none are "
        "given (see pyro_monteclora.data.tasks)",
    )
    group.add_argument("--split-seed", type=int, default=0, help="seed of the built-in task's split")
    for split in splits:
        group.add_argument(f"--{split}-file", default=None, help=f"{split} data: csv, tsv, json, jsonl or parquet")
    group.add_argument(
        "--text-column",
        action="append",
        default=None,
        help="text column; give it twice for sentence pairs (default: text)",
    )
    group.add_argument("--label-column", default=None, help="label column (default: label)")
    group.add_argument(
        "--prompt-column",
        default=None,
        help="causal-lm: the prompt field (default: instruction [+ input], question "
        "or prompt, whichever the records have)",
    )
    group.add_argument(
        "--response-column", default=None, help="causal-lm: the response field (default: output, answer or response)"
    )
    group.add_argument("--dataset", default=None, help="a Hugging Face hub data set (needs network)")
    group.add_argument("--dataset-config", default=None, help="its configuration (e.g. mrpc)")
    group.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per example, longer texts are truncated (default 128; 256 for "
        "causal-lm, whose prompts are cut from the left)",
    )


def _adapter_flag(field: str) -> str:
    """The option of a config field, without its dashes (``lora-dropout``, ``kl-weight``)."""
    return str(ADAPTER_OPTION_OVERRIDES.get(field, {}).get("name", field.replace("_", "-")))


def adapter_dests() -> Tuple[str, ...]:
    """The ``args`` attributes of the adapter options, one per config field in field order (the
    names ``run.json`` records them under)."""
    return tuple(_adapter_flag(field.name).replace("-", "_") for field in dataclasses.fields(MonteCLoRAConfig))


def add_adapter_options(parser: argparse.ArgumentParser, method: bool = True) -> None:
    """``--method`` (unless ``method=False``) and one option per
    :class:`~pyro_monteclora.config.MonteCLoRAConfig` field: its type, choices, default and help
    come from the field, except where :data:`ADAPTER_OPTION_OVERRIDES` says otherwise."""
    group = parser.add_argument_group("method and adapters (the MonteCLoRAConfig fields)")
    if method:
        group.add_argument(
            "--method",
            default="monteclora",
            choices=METHODS,
            help="monteclora (Bayesian LoRA), lora (point-estimate LoRA) or full fine-tuning",
        )
    hints = typing.get_type_hints(MonteCLoRAConfig)
    for field, dest in zip(dataclasses.fields(MonteCLoRAConfig), adapter_dests()):
        override = ADAPTER_OPTION_OVERRIDES.get(field.name, {})
        flags = ["--" + _adapter_flag(field.name), *override.get("aliases", ())]
        settings = {
            "dest": dest,
            "default": override.get("default", field.default),
            "help": str(override.get("help", field.metadata["help"])).replace("%", "%%"),
        }
        hint = hints[field.name]
        if hint is bool:
            settings["action"] = "store_true"
        elif hint in (int, float, Optional[float]):
            settings["type"] = int if hint is int else float
        elif "choices" in field.metadata:
            settings["choices"] = field.metadata["choices"]
        group.add_argument(*flags, **settings)


def _names(text: Optional[str]) -> Optional[List[str]]:
    return None if text is None else [name.strip() for name in text.split(",") if name.strip()]


def option_message(error: Exception) -> str:
    """A config error in the command line's words: ``MonteCLoRAConfig.rank`` becomes ``--rank``."""
    fields = {field.name for field in dataclasses.fields(MonteCLoRAConfig)}
    return re.sub(
        r"MonteCLoRAConfig\.(\w+)",
        lambda match: "--" + _adapter_flag(match.group(1)) if match.group(1) in fields else match.group(0),
        str(error),
    )


def adapter_config(arguments: Mapping[str, object], network=None, new_modules: Sequence[str] = ()) -> MonteCLoRAConfig:
    """The :class:`~pyro_monteclora.config.MonteCLoRAConfig` of the adapter options in
    ``arguments`` (``vars(args)`` or a run's recorded arguments; a missing one takes its default).

    With ``network``, ``--target-modules`` defaults to the layers of its model type and the
    classification head and ``new_modules`` (newly initialised weights) are added to
    ``--modules-to-save``. Without it, the options are only validated.

    :raises UsageError: naming the option, for a value the config refuses.
    """
    from pyro_monteclora.hf_defaults import default_modules_to_save, default_target_modules, model_type

    values = {}
    for field, dest in zip(dataclasses.fields(MonteCLoRAConfig), adapter_dests()):
        if arguments.get(dest) is not None:
            values[field.name] = arguments[dest]
    for name in ("target_modules", "modules_to_save"):
        if name in values:
            values[name] = _names(values[name])
    if network is not None:
        if "target_modules" not in values:
            try:
                values["target_modules"] = default_target_modules(network)
            except ValueError:
                raise UsageError(
                    f"--target-modules: no default for model type {model_type(network)!r}; "
                    f"pass layer names, e.g. --target-modules query,value"
                ) from None
        given = values.get("modules_to_save", [])
        values["modules_to_save"] = sorted(set(default_modules_to_save(network)) | set(new_modules) | set(given))
    try:
        config = MonteCLoRAConfig(**values)
    except ValueError as error:
        raise UsageError(option_message(error)) from None
    if network is not None:  # each name given must be there (the head alone would match anyway)
        paths = [path for path, _ in network.named_modules() if path]
        unmatched = [
            name
            for name in given
            if not any(dataclasses.replace(config, modules_to_save=(name,)).matches_saved(path) for path in paths)
        ]
        if unmatched:
            raise UsageError(f"--modules-to-save: {', '.join(unmatched)} matches no module of {type(network).__name__}")
    return config


def check_adapter_options(args) -> None:
    """Raise :class:`UsageError` (naming the option) unless the adapter options make a valid config."""
    adapter_config(vars(args))


def resolve_device(name: str):
    """``auto``/``cpu``/``cuda`` as a ``torch.device``; ``cuda`` without CUDA is a usage error."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: CUDA is not available on this machine (use cpu or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_model_path(name: Optional[str], task_type: str = "sequence-classification") -> str:
    """A local model folder (checked), a ``.gguf`` file (converted once, see
    :mod:`pyro_monteclora.storage.pretrained`) or a hub name; ``None`` is the packaged default: MiniLM for
    classification, SmolLM2-135M-Instruct for ``causal-lm``."""
    from pyro_monteclora.storage.pretrained import default_decoder_path, is_gguf, materialize_gguf

    if name is None:
        from pyro_monteclora.data.classification import default_encoder_path

        try:
            return str(default_decoder_path() if task_type == "causal-lm" else default_encoder_path())
        except (ImportError, OSError, ValueError, RuntimeError) as error:  # also a broken GGUF file
            raise UsageError(f"--model: no default model ({error}); pass --model") from None
    path = Path(name).expanduser()
    if is_gguf(name):
        try:
            return str(materialize_gguf(path))
        except (FileNotFoundError, ImportError, OSError, ValueError) as error:
            raise UsageError(f"--model {name}: {error}".splitlines()[0]) from None
    if path.exists() or name.startswith((".", "/", "~")):
        if not (path / "config.json").is_file():
            raise UsageError(f"--model {name}: not a Hugging Face model folder (no config.json)")
        return str(path.resolve())
    return name


def data_mode(args) -> Optional[str]:
    """Which data source the command line names: ``"task"`` (the built-in task alone), ``"files"``,
    ``"dataset"`` or ``None``. A paper task (``--task mrpc``) may come with files or a data set of
    its schema; with neither it reads the hub."""
    files = [getattr(args, f"{split}_file", None) for split in ("train", "validation", "test")]
    task = getattr(args, "task", None)
    builtin = task is not None and TASK_SPECS[task].builtin
    given = [
        mode
        for mode, present in (("task", task is not None), ("files", any(files)), ("dataset", args.dataset is not None))
        if present
    ]
    if given == ["task"] and not builtin:
        return "dataset"
    if task is not None and not builtin:
        given.remove("task")
    if len(given) > 1:
        names = {"task": "--task rotten-tomatoes (built in)", "files": "--*-file", "dataset": "--dataset"}
        raise UsageError(
            f"choose one data source: --task, --*-file or --dataset (got {' and '.join(names[g] for g in given)})"
        )
    return given[0] if given else None


def task_of(args, recorded: Optional[dict] = None):
    """The :class:`~pyro_monteclora.data.tasks.TaskSpec` of ``--task`` (else of the recorded data), or
    ``None``."""
    name = getattr(args, "task", None) or (recorded or {}).get("task")
    return TASK_SPECS[name] if name in TASK_SPECS else None


def evaluation_split(args, recorded: Optional[dict] = None) -> str:
    """``--split``, else where results come from: the test split when the data has one with labels
    (``--test-file``, a recorded test file, the built-in task), else the validation split (GLUE and
    SuperGLUE, whose test labels are hidden)."""
    if getattr(args, "split", None):
        return args.split
    if getattr(args, "test_file", None):
        return "test"
    spec = recorded if data_mode(args) is None else None
    if spec and spec.get("source") == "files":
        return "test" if "test" in spec.get("files", {}) else "validation"
    task = task_of(args, spec)
    return task.evaluation_split if task is not None else "test"


_SPEC_TEXT = {"kind": "text", "nullable": True, "default": None}
#: the data specification recorded with a run and a checkpoint (what :func:`resolve_data` returns),
#: checked when it is read back
DATA_SPEC_CHECKS = {
    "source": {"kind": ("task", "files", "dataset")},
    "task": {"kind": TASKS, "nullable": True, "default": None},
    "task_type": _SPEC_TEXT,
    "text_columns": {"kind": "texts", "nullable": True, "default": None},
    "label_column": _SPEC_TEXT,
    "prompt_column": _SPEC_TEXT,
    "response_column": _SPEC_TEXT,
    "label_names": {"kind": "texts", "nullable": True, "default": None},
    "sha256": {"kind": "object", "default": None},
}
#: the fields each source needs
SOURCE_CHECKS = {
    "task": {"split_seed": {"kind": "integer", "minimum": 0, "maximum": MAX_SEED}},
    "files": {"files": {"kind": "object"}},
    "dataset": {"dataset": {"kind": "text"}, "dataset_config": _SPEC_TEXT},
}


def check_data_spec(spec, name: str) -> None:
    """Raise :class:`UsageError` unless ``spec``, a recorded data specification read back from
    ``name`` (``run.json: data``), has every field it needs, each of the right type."""

    def field(key: str) -> str:
        return f"{name}.{key}"

    if not isinstance(spec, dict):
        raise UsageError(f"{name} must be an object, got {shown(spec)}")
    check_values(spec, DATA_SPEC_CHECKS, field, read_back=True)
    check_values(spec, SOURCE_CHECKS[spec["source"]], field, read_back=True)
    try:
        for split, path in spec.get("files", {}).items():
            check_value(field(f"files.{split}"), split, ("train", "validation", "test"))
            check_value(field(f"files.{split}"), path, "text")
        for split, digest in (spec.get("sha256") or {}).items():
            check_value(field(f"sha256.{split}"), digest, "text", nullable=True)
    except FieldError as error:
        raise UsageError(str(error)) from None


def file_sha256(path: str) -> str:
    """The SHA-256 of a file, recorded with a run so that a changed data file is noticed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_data(
    args,
    needed: Sequence[str],
    label_names: Optional[Sequence[str]] = None,
    recorded: Optional[dict] = None,
    optional_unlabelled: Sequence[str] = (),
    training: bool = False,
) -> Tuple[Dict[str, object], dict]:
    """Load and validate the splits in ``needed`` (the first one is required).

    :param recorded: the data specification saved with a checkpoint, used when the command line
        names no data source; its files must be unchanged (their SHA-256 is recorded).
    :param optional_unlabelled: hub splits skipped when every label is missing or ``-1`` (GLUE's
        test splits) instead of failing.
    :param training: the ``train`` split trains a classifier: it must hold two labels (in its
        first ``args.max_train_samples`` examples), checked before the other splits are read.
    :returns: ``({split: TextClassificationData}, spec)``; ``spec`` is JSON-able and reproduces them.
    """
    spec = _classification_spec(args, recorded)
    task = None if spec["source"] == "task" else task_of(args, spec)
    if task is not None:
        if task.kind != "classification":
            raise UsageError(
                f"--task {task.name} is a {task.kind} task for decoders; train it with --task-type causal-lm"
            )
        spec["task"] = task.name
        label_names = label_names or task.label_names
    _set_columns(args, spec, recorded, task)
    splits = _read_classification_splits(args, spec, task, needed, label_names, optional_unlabelled, training)
    if needed[0] not in splits:
        raise UsageError(f"no {needed[0]} data: pass --{needed[0]}-file (or --task / --dataset)")
    spec["label_names"] = list(splits[needed[0]].label_names)
    return splits, spec


def _classification_spec(args, recorded: Optional[dict]) -> dict:
    """Where the classification data comes from: the recorded specification when the command line
    names no source, else the built-in task, the files or the hub data set it names."""
    if getattr(args, "prompt_column", None) or getattr(args, "response_column", None):
        raise UsageError("--prompt-column/--response-column apply to causal-lm data only (train --task-type causal-lm)")
    mode = data_mode(args)
    if mode is None and recorded is not None:
        return dict(recorded)
    if mode in (None, "task"):
        return {"source": "task", "task": args.task or TASKS[0], "split_seed": args.split_seed}
    if mode == "files":
        return {
            "source": "files",
            "files": {
                split: str(Path(getattr(args, f"{split}_file")).resolve())
                for split in ("train", "validation", "test")
                if getattr(args, f"{split}_file", None)
            },
        }
    if args.dataset is not None:
        return {"source": "dataset", "dataset": args.dataset, "dataset_config": args.dataset_config}
    # a paper task with no files: its hub data set
    if TASK_SPECS[args.task].kind != "classification":
        raise UsageError(
            f"--task {args.task} is a {TASK_SPECS[args.task].kind} task for decoders; "
            f"train it with --task-type causal-lm"
        )
    hub, config = TASK_SPECS[args.task].hub
    return {"source": "dataset", "dataset": hub, "dataset_config": config}


def _set_columns(args, spec: dict, recorded: Optional[dict], task) -> None:
    """Put the text and label columns of file or hub data into ``spec`` (the command line's, else
    the recorded ones, else the task's or ``text``/``label``); the built-in task takes none."""
    if spec["source"] != "task":
        default_columns = list(task.text_columns) if task else ["text"]
        spec["text_columns"] = args.text_column or (recorded or {}).get("text_columns") or default_columns
        spec["label_column"] = (
            args.label_column or (recorded or {}).get("label_column") or (task.label_column if task else "label")
        )
        if len(spec["text_columns"]) > 2:
            raise UsageError(f"--text-column: give one, or two for sentence pairs; got {spec['text_columns']}")
    elif args.text_column or args.label_column:
        raise UsageError("--text-column/--label-column apply to --*-file and --dataset data only")


def recorded_file(spec: dict, split: str) -> Optional[str]:
    """The file of ``split`` in a ``"files"`` data specification (``None`` if it has none), its
    SHA-256 checked against the one recorded with a run and recorded in ``spec``.

    :raises UsageError: when the file changed since the run was made.
    """
    path = spec["files"].get(split)
    if path is None:
        return None
    digest = file_sha256(path) if Path(path).is_file() else None
    expected = spec.setdefault("sha256", {}).get(split)
    if expected is not None and digest is not None and digest != expected:
        raise UsageError(f"{path} changed since the run was made (SHA-256 differs)")
    spec["sha256"][split] = digest
    return path


def _read_classification_splits(
    args, spec: dict, task, needed: Sequence[str], label_names, optional_unlabelled: Sequence[str], training: bool
) -> Dict[str, object]:
    """The splits in ``needed`` that the source has; with ``training``, the train split's labels
    are checked before the next split is read. Data errors become :class:`UsageError`."""
    from pyro_monteclora.data.classification import load_rotten_tomatoes
    from pyro_monteclora.data.records import DataError, hub_split_names

    splits = {}
    try:
        available = None
        if spec["source"] == "dataset":
            available = hub_split_names(spec["dataset"], spec["dataset_config"])
        if spec["source"] == "task":
            check_seed("--split-seed", spec["split_seed"])
            everything = load_rotten_tomatoes(seed=spec["split_seed"])
            return {split: everything[split] for split in needed}
        for split in needed:
            data = _read_classification_split(spec, task, split, label_names, available, optional_unlabelled)
            if data is None:
                continue
            splits[split] = data
            label_names = data.label_names
            if training and split == "train":
                limit = getattr(args, "max_train_samples", None)
                check_training_labels(data.subset(limit) if limit else data, spec, limit)
    except (DataError, OSError) as error:
        raise UsageError(str(error)) from None
    return splits


def _read_classification_split(
    spec: dict, task, split: str, label_names, available: Optional[dict], optional_unlabelled: Sequence[str]
):
    """One split from the files or the hub, or ``None`` when the source lacks it (or, for a split
    of ``optional_unlabelled``, holds no label)."""
    from pyro_monteclora.data.records import load_hub_records, read_records, records_to_classification

    def labelled(rows, source):  # a paper task's labels as names (and WiC's word before its text)
        if task is None:
            return rows
        return task.classification_rows(rows, source, spec["text_columns"], spec["label_column"])

    if spec["source"] == "files":
        path = recorded_file(spec, split)
        if path is None:
            return None
        return records_to_classification(
            labelled(read_records(path), path), path, spec["text_columns"], spec["label_column"], label_names
        )
    if split not in available:
        return None
    rows = load_hub_records(spec["dataset"], spec["dataset_config"], split)
    if split in optional_unlabelled and all(row.get(spec["label_column"]) in (None, -1) for row in rows):
        return None
    source = f"{spec['dataset']}[{split}]"
    return records_to_classification(
        labelled(rows, source), source, spec["text_columns"], spec["label_column"], label_names
    )


def check_training_labels(data, spec: dict, max_train_samples: Optional[int] = None) -> None:
    """Refuse a classifier's training set whose examples all carry one label (a single row, say):
    the classifier would learn to say that label and nothing else.

    :param data: the training :class:`~pyro_monteclora.data.classification.TextClassificationData` (after
        ``--max-train-samples``).
    :param spec: the data specification of :func:`resolve_data`, to name the file.
    """
    present = sorted(set(data.labels))
    if len(present) >= 2:
        return
    if spec.get("source") == "files":
        source = spec["files"]["train"]
    elif spec.get("source") == "dataset":
        source = f"{spec['dataset']}[train]"
    else:
        source = f"--task {spec.get('task')}"
    only = repr(data.label_names[present[0]]) if present else "none"
    limit = f" (--max-train-samples {max_train_samples})" if max_train_samples else ""
    rows = f"its only row{limit} has" if len(data) == 1 else f"all its {len(data)} rows{limit} have"
    raise UsageError(
        f"{source}: a classifier needs at least two labels in its training data, but {rows} the label {only}"
    )


def check_writable(path: Path, option: str) -> None:
    """Raise :class:`UsageError` unless ``path`` could be created: its nearest existing ancestor
    must be a writable folder, no part of it a symbolic link that leads nowhere (dangling, or a
    loop, which ``Path.exists`` reports as absent), ``path`` itself not a device, pipe or socket
    (``/dev/stdout``: an atomic write would replace it), and nothing of it inside a run's
    ``checkpoint/`` folder (training replaces that folder whole every epoch)."""
    ancestor = Path(os.path.abspath(path))
    if ancestor.exists() and not (ancestor.is_file() or ancestor.is_dir()):
        raise UsageError(
            f"{option} {path} is not a regular file or folder (a device, pipe or socket); "
            "give a file name, or - for stdout"
        )
    _check_not_in_checkpoint(ancestor, option, path)
    while not ancestor.exists():
        if os.path.lexists(ancestor):
            what = "" if ancestor == Path(os.path.abspath(path)) else f": {ancestor}"
            raise UsageError(
                f"{option} {path}{what} is a symbolic link to nowhere (dangling, or a "
                f"loop); remove it or give another path"
            )
        ancestor = ancestor.parent
    if ancestor != Path(os.path.abspath(path)) and not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is a file, so no folder can be made there")
    if not os.access(ancestor, os.W_OK):
        raise UsageError(f"{option} {path}: {ancestor} is not writable")


def _check_not_in_checkpoint(path: Path, option: str, given) -> None:
    """Refuse ``path`` when it is, or lies inside, a run's checkpoint folder."""
    from pyro_monteclora.cli.runs import is_inside_checkpoint

    folder = is_inside_checkpoint(path)
    if folder is not None:
        raise UsageError(
            f"{option} {given} lies inside the run {folder.parent}'s {folder.name}/, which "
            f"its training replaces whole every epoch; write elsewhere"
        )


def check_output_folder(args) -> Path:
    """``--output`` as a path that is not a file and can be made, that no other process is writing
    (see :func:`lock_output_folder`), with ``--resume`` and ``--overwrite`` not both given."""
    from pyro_monteclora.storage.atomic import folder_in_use

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} exists and is not a folder")
    if folder_in_use(output):
        raise UsageError(_in_use(output))
    check_writable(output, "--output")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    return output


def _in_use(output: Path) -> str:
    return (
        f"--output {output} is in use by another process (a train or sweep still writing it); "
        f"wait for it to end, or choose another --output"
    )


def lock_output_folder(output: Path, args, marker: str, kind: str):
    """Take ``output``'s :class:`~pyro_monteclora.storage.atomic.FolderLock` (creating the folder) for the
    rest of the command; without ``--resume``, empty it.

    Called once everything is validated, just before the first write. Under the lock the folder
    is checked again (another process may have filled it since :func:`check_replaceable`), and
    without ``--resume`` its old content is deleted (the lock file stays, so the lock is never
    lost). The kernel drops the lock when the process ends, ``kill -9`` included.

    :returns: the held lock; call its ``release()`` when the command ends.
    :raises UsageError: when another process holds the folder.
    """
    from pyro_monteclora.storage.atomic import FolderInUse, FolderLock, clear_folder

    lock = FolderLock(output)
    try:
        lock.acquire()
    except FolderInUse:
        raise UsageError(_in_use(output)) from None
    try:
        if not args.resume:
            check_replaceable(output, args.overwrite, marker, kind)
            clear_folder(output)
    except BaseException:
        lock.release()
        raise
    return lock


def _real(path) -> str:
    return os.path.realpath(os.path.expanduser(str(path)))


def _within(path, folder) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it, symbolic links resolved."""
    real, base = _real(path), _real(folder)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _same_file(a, b) -> bool:
    if _real(a) == _real(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def run_inputs(args) -> List[Tuple[str, Optional[str]]]:
    """The files and folders a ``train`` or ``sweep`` reads, as ``(option, path)`` pairs."""
    return [
        ("--train-file", args.train_file),
        ("--validation-file", args.validation_file),
        ("--test-file", args.test_file),
        ("--model", args.model),
    ]


def check_inputs_outside(
    output: Path, inputs: Sequence[Tuple[str, Optional[object]]], option: str = "--output"
) -> None:
    """Refuse to replace the folder ``output`` when an input the command reads lies inside it:
    ``--overwrite`` would delete the data, model or checkpoint being used.

    :param inputs: ``(option, path)`` pairs; ``None`` and paths that do not exist (a hub name)
        are skipped. Paths are compared with symbolic links resolved.
    """
    for name, path in inputs:
        if path is None or not os.path.exists(os.path.expanduser(str(path))):
            continue
        if _within(path, output):
            raise UsageError(
                f"{option} {output} holds {name} {path}, which this command reads: "
                f"replacing {output} would delete it; move it out or choose another "
                f"{option}"
            )


def check_file_output_not_input(output, option: str, inputs: Sequence[Tuple[str, Optional[object]]]) -> None:
    """Refuse a file ``output`` that is an input file, or an existing file inside an input folder
    (the checkpoint, the model): ``--overwrite`` would replace what the command reads."""
    if output in (None, "-"):
        return
    for name, path in inputs:
        if path in (None, "-") or not os.path.exists(os.path.expanduser(str(path))):
            continue
        if os.path.isdir(path):
            hit = os.path.lexists(output) and _within(output, path)
        else:
            hit = _same_file(output, path)
        if hit:
            raise UsageError(
                f"{option} {output} would replace {name} {path}, which this command reads; choose another {option}"
            )


def check_distinct_outputs(outputs: Sequence[Tuple[str, Optional[str]]]) -> None:
    """Refuse two output options naming one file (the second write would replace the first)."""
    given = [(option, value) for option, value in outputs if value not in (None, "-")]
    for index, (option, value) in enumerate(given):
        for other, earlier in given[:index]:
            if _same_file(value, earlier):
                raise UsageError(f"{other} and {option} name the same file ({value}); give each its own path")


def check_replaceable(output: Path, overwrite: bool, marker: str, kind: str) -> None:
    """An existing, non-empty ``output`` needs ``--overwrite`` (or ``--resume``), and is replaced
    only when it holds ``marker`` (it is a ``kind`` folder): nothing else is ever deleted."""
    if not existing_output(output):
        return
    if not overwrite:
        raise UsageError(f"--output {output} already exists; pass --overwrite to replace it or --resume to continue it")
    if not (output / marker).is_file():
        raise UsageError(f"--overwrite: {output} is not a {kind} folder (no {marker}); refusing to delete it")


def existing_output(path: Path) -> bool:
    """Whether ``path`` exists and is not an empty folder (a lock file left by a killed run does
    not count)."""
    from pyro_monteclora.storage.atomic import LOCK_NAME

    if not path.exists():
        return False
    if not path.is_dir():
        return True
    with os.scandir(path) as entries:
        return any(entry.name != LOCK_NAME for entry in entries)
