"""Options shared by the commands, their validation, and where the data and the model come from.

Everything here runs before any work: a bad option or bad data raises :class:`UsageError`, which
``main`` prints as one line on stderr before exiting with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from safetensors import SafetensorError

from .._fields import MAX_SEED, FieldError, check_value, number_problem, shown

__all__ = ["UsageError", "OneLineParser", "add_model_options", "add_data_options",
           "add_adapter_options", "check_number", "check_seed", "check_values", "check_data_spec",
           "MAX_SEED", "LOAD_ERRORS", "load_error", "resolve_data", "resolve_model_path",
           "default_target_modules", "default_modules_to_save", "resolve_device", "check_writable",
           "existing_output", "check_output_folder", "check_replaceable", "data_mode", "task_of", "evaluation_split", "file_sha256", "add_dtype_option", "resolve_precision", "TASKS",
           "METHODS"]

from ..tasks import TASKS as TASK_SPECS

TASKS = tuple(TASK_SPECS)
METHODS = ("monteclora", "lora", "full")
#: default adapted layers per ``model_type`` (the paper's query/value choice for encoders)
TARGETS_BY_MODEL_TYPE = {
    "bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
    "electra": ["query", "value"], "deberta": ["in_proj"], "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"], "gpt2": ["c_attn"], "llama": ["q_proj", "k_proj", "v_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj"], "qwen2": ["q_proj", "k_proj", "v_proj"],
}
HEAD_NAMES = ("pre_classifier", "classifier", "score")
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


def check_number(name: str, value, minimum=None, maximum=None, integer: bool = False,
                 exclusive_minimum: bool = False) -> None:
    """Raise :class:`UsageError` unless ``value`` is finite and in range; ``name`` is the option.
    The rule is :func:`~pyro_monteclora._fields.number_problem`'s, which also checks the values
    read back from a run's files."""
    if value is None:
        return
    problem = number_problem(value, minimum, maximum, integer, exclusive_minimum)
    if problem:
        raise UsageError(f"{name} {problem}")


def check_seed(name: str, value) -> None:
    """A seed: an integer in ``[0, 2**32 - 1]`` (NumPy's generator refuses anything else)."""
    check_number(name, value, minimum=0, maximum=MAX_SEED, integer=True)


def check_values(values: dict, rules: Dict[str, dict], name_of: Callable[[str], str],
                 read_back: bool = False) -> dict:
    """Check each of ``values`` that ``rules`` names with :func:`~pyro_monteclora._fields.check_value`
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
    group.add_argument("--model", default=None,
                       help="HF model folder, hub name or .gguf file (default: the packaged "
                            "all-MiniLM-L6-v2; SmolLM2-135M-Instruct with --task-type causal-lm)")
    group.add_argument("--trust-remote-code", action="store_true",
                       help="allow model code from the hub (off by default)")
    group.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                       help="where to run (auto: CUDA when available)")
    add_dtype_option(group)


def add_dtype_option(parser) -> None:
    """``--dtype fp32|bf16|fp16``: the frozen base's precision (adapters and sampler stay fp32)."""
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"],
                        help="precision of the frozen base, run under autocast; adapters, head, "
                             "guide and sampler stay fp32 (fp16 needs CUDA)")


def resolve_precision(name: str, device):
    """The torch dtype of ``--dtype`` on ``device``; one the device cannot run is a usage error."""
    from ..precision import check_precision

    try:
        return check_precision(name, device)
    except ValueError as error:
        raise UsageError(f"--dtype {name}: {error}") from None


def add_data_options(parser: argparse.ArgumentParser, splits: Sequence[str]) -> None:
    """The data source options, with a ``--<split>-file`` for each of ``splits``."""
    group = parser.add_argument_group("data (default: --task rotten-tomatoes)")
    group.add_argument("--task", default=None, choices=TASKS,
                       help="rotten-tomatoes: the built-in 12,808 critic sentences, split 80/10/10 "
                            "with --split-seed; the paper's tasks (GLUE/SuperGLUE, commonsense, "
                            "gsm8k) read --*-file files of their schema, or the hub when none are "
                            "given (see pyro_monteclora.tasks)")
    group.add_argument("--split-seed", type=int, default=0, help="seed of the built-in task's split")
    for split in splits:
        group.add_argument(f"--{split}-file", default=None,
                           help=f"{split} data: csv, tsv, json, jsonl or parquet")
    group.add_argument("--text-column", action="append", default=None,
                       help="text column; give it twice for sentence pairs (default: text)")
    group.add_argument("--label-column", default=None, help="label column (default: label)")
    group.add_argument("--prompt-column", default=None,
                       help="causal-lm: the prompt field (default: instruction [+ input], question "
                            "or prompt, whichever the records have)")
    group.add_argument("--response-column", default=None,
                       help="causal-lm: the response field (default: output, answer or response)")
    group.add_argument("--dataset", default=None, help="a Hugging Face hub data set (needs network)")
    group.add_argument("--dataset-config", default=None, help="its configuration (e.g. mrpc)")
    group.add_argument("--max-length", type=int, default=None,
                       help="tokens per example, longer texts are truncated (default 128; 256 for "
                            "causal-lm, whose prompts are cut from the left)")


def add_adapter_options(parser: argparse.ArgumentParser, method: bool = True) -> None:
    """``--method`` (unless ``method=False``) and the adapter and prior hyper-parameters."""
    group = parser.add_argument_group("method and adapters")
    if method:
        group.add_argument("--method", default="monteclora", choices=METHODS,
                           help="monteclora (Bayesian LoRA), lora (point-estimate LoRA) or full fine-tuning")
    group.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    group.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (scaling alpha/r)")
    group.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapter input")
    group.add_argument("--target-modules", default=None,
                       help="comma-separated layer names to adapt (default: by model type, "
                            "query,value for BERT)")
    group.add_argument("--num-components", type=int, default=4, help="mixture components N")
    group.add_argument("--sample-scaler", type=float, default=5e-3, help="sample scaler s")
    group.add_argument("--kl-weight", type=float, default=1.0, help="weight of the KL term")


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
    :mod:`pyro_monteclora.pretrained`) or a hub name; ``None`` is the packaged default: MiniLM for
    classification, SmolLM2-135M-Instruct for ``causal-lm``."""
    from ..pretrained import default_decoder_path, is_gguf, materialize_gguf

    if name is None:
        from ..data import default_encoder_path

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


def default_target_modules(network) -> List[str]:
    """The layers adapted by default for the network's ``model_type`` (query/value for BERT)."""
    model_type = getattr(getattr(network, "config", None), "model_type", None)
    if model_type not in TARGETS_BY_MODEL_TYPE:
        raise UsageError(f"--target-modules: no default for model type {model_type!r}; "
                         f"pass layer names, e.g. --target-modules query,value")
    return TARGETS_BY_MODEL_TYPE[model_type]


def default_modules_to_save(network) -> List[str]:
    """The classification head's modules (``classifier``, ``score``, ``pre_classifier``)."""
    names = {path.rsplit(".", 1)[-1] for path, _ in network.named_modules() if path}
    return [name for name in HEAD_NAMES if name in names]


def data_mode(args) -> Optional[str]:
    """Which data source the command line names: ``"task"`` (the built-in task alone), ``"files"``,
    ``"dataset"`` or ``None``. A paper task (``--task mrpc``) may come with files or a data set of
    its schema; with neither it reads the hub."""
    files = [getattr(args, f"{split}_file", None) for split in ("train", "validation", "test")]
    task = getattr(args, "task", None)
    builtin = task is not None and TASK_SPECS[task].builtin
    given = [mode for mode, present in (("task", task is not None), ("files", any(files)),
                                         ("dataset", args.dataset is not None)) if present]
    if given == ["task"] and not builtin:
        return "dataset"
    if task is not None and not builtin:
        given.remove("task")
    if len(given) > 1:
        names = {"task": "--task rotten-tomatoes (built in)", "files": "--*-file", "dataset": "--dataset"}
        raise UsageError(f"choose one data source: --task, --*-file or --dataset (got "
                         f"{' and '.join(names[g] for g in given)})")
    return given[0] if given else None


def task_of(args, recorded: Optional[dict] = None):
    """The :class:`~pyro_monteclora.tasks.TaskSpec` of ``--task`` (else of the recorded data), or
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
    "source": {"kind": ("task", "files", "dataset")}, "task": {"kind": TASKS, "nullable": True, "default": None},
    "task_type": _SPEC_TEXT, "text_columns": {"kind": "texts", "nullable": True, "default": None},
    "label_column": _SPEC_TEXT, "prompt_column": _SPEC_TEXT, "response_column": _SPEC_TEXT,
    "label_names": {"kind": "texts", "nullable": True, "default": None},
    "sha256": {"kind": "object", "default": None}}
#: the fields each source needs
SOURCE_CHECKS = {"task": {"split_seed": {"kind": "integer", "minimum": 0, "maximum": MAX_SEED}},
                 "files": {"files": {"kind": "object"}},
                 "dataset": {"dataset": {"kind": "text"}, "dataset_config": _SPEC_TEXT}}


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


def resolve_data(args, needed: Sequence[str], label_names: Optional[Sequence[str]] = None,
                 recorded: Optional[dict] = None,
                 optional_unlabelled: Sequence[str] = ()) -> Tuple[Dict[str, object], dict]:
    """Load and validate the splits in ``needed`` (the first one is required).

    :param recorded: the data specification saved with a checkpoint, used when the command line
        names no data source; its files must be unchanged (their SHA-256 is recorded).
    :param optional_unlabelled: hub splits skipped when every label is missing or ``-1`` (GLUE's
        test splits) instead of failing.
    :returns: ``({split: TextClassificationData}, spec)``; ``spec`` is JSON-able and reproduces them.
    """
    from ..data import load_rotten_tomatoes
    from ..datafiles import (DataError, hub_split_names, load_hub_records, read_records,
                            records_to_classification)

    if getattr(args, "prompt_column", None) or getattr(args, "response_column", None):
        raise UsageError("--prompt-column/--response-column apply to causal-lm data only "
                         "(train --task-type causal-lm)")
    mode = data_mode(args)
    if mode is None and recorded is not None:
        spec = dict(recorded)
    elif mode in (None, "task"):
        spec = {"source": "task", "task": args.task or TASKS[0], "split_seed": args.split_seed}
    elif mode == "files":
        spec = {"source": "files", "files": {
            split: str(Path(getattr(args, f"{split}_file")).resolve())
            for split in ("train", "validation", "test") if getattr(args, f"{split}_file", None)}}
    elif args.dataset is not None:
        spec = {"source": "dataset", "dataset": args.dataset, "dataset_config": args.dataset_config}
    else:  # a paper task with no files: its hub data set
        if TASK_SPECS[args.task].kind != "classification":
            raise UsageError(f"--task {args.task} is a {TASK_SPECS[args.task].kind} task for decoders; "
                             f"train it with --task-type causal-lm")
        hub, config = TASK_SPECS[args.task].hub
        spec = {"source": "dataset", "dataset": hub, "dataset_config": config}
    task = None if spec["source"] == "task" else task_of(args, spec)
    if task is not None:
        if task.kind != "classification":
            raise UsageError(f"--task {task.name} is a {task.kind} task for decoders; train it with "
                             f"--task-type causal-lm")
        spec["task"] = task.name
        label_names = label_names or task.label_names
    if spec["source"] != "task":
        default_columns = list(task.text_columns) if task else ["text"]
        spec["text_columns"] = args.text_column or (recorded or {}).get("text_columns") or default_columns
        spec["label_column"] = (args.label_column or (recorded or {}).get("label_column")
                                or (task.label_column if task else "label"))
        if len(spec["text_columns"]) > 2:
            raise UsageError(f"--text-column: give one, or two for sentence pairs; got {spec['text_columns']}")
    elif args.text_column or args.label_column:
        raise UsageError("--text-column/--label-column apply to --*-file and --dataset data only")

    def labelled(rows, source):  # a paper task's labels as names (and WiC's word before its text)
        if task is None:
            return rows
        return task.classification_rows(rows, source, spec["text_columns"], spec["label_column"])

    splits = {}
    try:
        if spec["source"] == "dataset":
            available = hub_split_names(spec["dataset"], spec["dataset_config"])
        if spec["source"] == "task":
            check_seed("--split-seed", spec["split_seed"])
            everything = load_rotten_tomatoes(seed=spec["split_seed"])
            splits = {split: everything[split] for split in needed}
        else:
            for split in needed:
                if spec["source"] == "files":
                    path = spec["files"].get(split)
                    if path is None:
                        continue
                    digest = file_sha256(path) if Path(path).is_file() else None
                    expected = spec.setdefault("sha256", {}).get(split)
                    if expected is not None and digest is not None and digest != expected:
                        raise UsageError(f"{path} changed since the run was made (SHA-256 differs)")
                    spec["sha256"][split] = digest
                    data = records_to_classification(labelled(read_records(path), path),
                                                     path, spec["text_columns"], spec["label_column"],
                                                     label_names)
                else:
                    if split not in available:
                        continue
                    rows = load_hub_records(spec["dataset"], spec["dataset_config"], split)
                    if split in optional_unlabelled and all(
                            row.get(spec["label_column"]) in (None, -1) for row in rows):
                        continue
                    source = f"{spec['dataset']}[{split}]"
                    data = records_to_classification(labelled(rows, source), source,
                                                     spec["text_columns"], spec["label_column"],
                                                     label_names)
                splits[split] = data
                label_names = data.label_names
    except (DataError, OSError) as error:
        raise UsageError(str(error)) from None
    if needed[0] not in splits:
        raise UsageError(f"no {needed[0]} data: pass --{needed[0]}-file (or --task / --dataset)")
    spec["label_names"] = list(splits[needed[0]].label_names)
    return splits, spec


def check_writable(path: Path, option: str) -> None:
    """Raise :class:`UsageError` unless ``path`` could be created: its nearest existing ancestor
    must be a writable folder, no part of it a symbolic link that leads nowhere (dangling, or a
    loop, which ``Path.exists`` reports as absent), ``path`` itself not a device, pipe or socket
    (``/dev/stdout``: an atomic write would replace it), and nothing of it inside a run's
    ``checkpoint/`` folder (training replaces that folder whole every epoch)."""
    ancestor = Path(os.path.abspath(path))
    if ancestor.exists() and not (ancestor.is_file() or ancestor.is_dir()):
        raise UsageError(f"{option} {path} is not a regular file or folder (a device, pipe or socket); "
                         "give a file name, or - for stdout")
    _check_not_in_checkpoint(ancestor, option, path)
    while not ancestor.exists():
        if os.path.lexists(ancestor):
            what = "" if ancestor == Path(os.path.abspath(path)) else f": {ancestor}"
            raise UsageError(f"{option} {path}{what} is a symbolic link to nowhere (dangling, or a "
                             f"loop); remove it or give another path")
        ancestor = ancestor.parent
    if ancestor != Path(os.path.abspath(path)) and not ancestor.is_dir():
        raise UsageError(f"{option} {path}: {ancestor} is a file, so no folder can be made there")
    if not os.access(ancestor, os.W_OK):
        raise UsageError(f"{option} {path}: {ancestor} is not writable")


def _check_not_in_checkpoint(path: Path, option: str, given) -> None:
    """Refuse ``path`` when it is, or lies inside, a run's checkpoint folder."""
    from .train import CHECKPOINT_DIR, RUN_FILE

    for folder in (path, *path.parents):
        if folder.name in (CHECKPOINT_DIR, CHECKPOINT_DIR + ".old") and (folder.parent / RUN_FILE).is_file():
            raise UsageError(f"{option} {given} lies inside the run {folder.parent}'s {folder.name}/, which "
                             f"its training replaces whole every epoch; write elsewhere")


def check_output_folder(args) -> Path:
    """``--output`` as a path that is not a file and can be made, with ``--resume`` and
    ``--overwrite`` not both given."""
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise UsageError(f"--output {output} exists and is not a folder")
    check_writable(output, "--output")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite exclude each other")
    return output


def check_replaceable(output: Path, overwrite: bool, marker: str, kind: str) -> None:
    """An existing, non-empty ``output`` needs ``--overwrite`` (or ``--resume``), and is replaced
    only when it holds ``marker`` (it is a ``kind`` folder): nothing else is ever deleted."""
    if not existing_output(output):
        return
    if not overwrite:
        raise UsageError(f"--output {output} already exists; pass --overwrite to replace it or "
                         f"--resume to continue it")
    if not (output / marker).is_file():
        raise UsageError(f"--overwrite: {output} is not a {kind} folder (no {marker}); refusing to delete it")


def existing_output(path: Path) -> bool:
    """Whether ``path`` exists and is not an empty folder."""
    return path.exists() and (not path.is_dir() or any(os.scandir(path)))
