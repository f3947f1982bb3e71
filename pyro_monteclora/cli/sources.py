"""Where a command's data comes from: the built-in task, local files or the hub, recorded as a
data specification (with each file's SHA-256) that ``--resume`` and ``evaluate`` read back and check.

Everything here runs before any work: bad data raises :class:`~pyro_monteclora.cli.options.UsageError`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from pyro_monteclora.cli.options import TASKS, UsageError, check_seed, check_values
from pyro_monteclora.data.tasks import TASKS as TASK_SPECS
from pyro_monteclora.validation import MAX_SEED, FieldError, check_value, shown

__all__ = [
    "data_mode",
    "task_of",
    "evaluation_split",
    "DATA_SPEC_CHECKS",
    "SOURCE_CHECKS",
    "check_data_spec",
    "file_sha256",
    "resolve_data",
    "recorded_file",
    "check_training_labels",
]


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
        from pyro_monteclora.data.hf_datasets import saved_dataset_folder

        saved = saved_dataset_folder(args.dataset)  # a saved folder is recorded by its absolute path
        dataset = str(saved.resolve()) if saved is not None else args.dataset
        return {"source": "dataset", "dataset": dataset, "dataset_config": args.dataset_config}
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
    from pyro_monteclora.data.errors import DataError
    from pyro_monteclora.data.hf_datasets import hub_split_names

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
    from pyro_monteclora.data.files import load_file_table
    from pyro_monteclora.data.hf_datasets import load_hub_table
    from pyro_monteclora.data.records import table_to_classification

    def labelled(table, source):  # a paper task's labels as names (and WiC's word before its text)
        if task is None:
            return table
        return task.classification_table(table, source, spec["text_columns"], spec["label_column"])

    if spec["source"] == "files":
        path = recorded_file(spec, split)
        if path is None:
            return None
        return table_to_classification(
            labelled(load_file_table(path), path), path, spec["text_columns"], spec["label_column"], label_names
        )
    if split not in available:
        return None
    table = load_hub_table(spec["dataset"], spec["dataset_config"], split)
    if split in optional_unlabelled and _unlabelled(table, spec["label_column"]):
        return None
    source = f"{spec['dataset']}[{split}]"
    return table_to_classification(
        labelled(table, source), source, spec["text_columns"], spec["label_column"], label_names
    )


def _unlabelled(table, label_column: str) -> bool:
    """Whether no row of ``table`` has a label (a hub test split's labels are -1 or missing)."""
    if label_column not in table.column_names:
        return True
    return all(
        value in (None, -1)
        for batch in table.select_columns([label_column]).iter(batch_size=10_000)
        for value in batch[label_column]
    )


def check_training_labels(data, spec: dict, max_train_samples: Optional[int] = None) -> None:
    """Refuse a classifier's training set whose examples all carry one label (a single row, say):
    the classifier would learn to say that label and nothing else.

    :param data: the training :class:`~pyro_monteclora.data.classification.TextClassificationData` (after
        ``--max-train-samples``).
    :param spec: the data specification of :func:`resolve_data`, to name the file.
    """
    present = data.present_labels()
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
