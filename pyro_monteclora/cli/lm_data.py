"""Where a decoder's data comes from on the command line: (prompt, response) files and
multiple-choice files, local or from the hub, validated before any model is loaded."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from pyro_monteclora.cli.options import UsageError
from pyro_monteclora.cli.sources import data_mode, recorded_file, task_of

__all__ = ["resolve_instruction_data", "load_multiple_choice_split"]


def _check_source(args) -> str:
    mode = data_mode(args)
    task = task_of(args)
    if task is not None and task.kind == "classification":
        raise UsageError(
            f"--task {task.name} is a classification task; causal-lm data comes from "
            f"--train-file/--validation-file/--test-file, --dataset or a decoder task "
            f"(piqa, siqa, winogrande, arc-e, arc-c, obqa, gsm8k)"
        )
    if mode == "dataset" and args.dataset is None and task.hub is None:
        raise UsageError(
            f"--task {task.name} reads files in LLM-Adapters' commonsense_15k schema "
            f"(instruction, input, output, answer): pass --train-file (e.g. "
            f"commonsense_15k.json) and --test-file (e.g. the task's test.json)"
        )
    if getattr(args, "text_column", None) or getattr(args, "label_column", None):
        raise UsageError(
            "--text-column/--label-column apply to classification data; for causal-lm "
            "use --prompt-column/--response-column"
        )
    return mode


def _located_rows(spec: dict, split: str, available: Optional[dict]):
    from pyro_monteclora.data.files import read_located_records
    from pyro_monteclora.data.hf_datasets import load_hub_table

    if spec["source"] == "files":
        path = recorded_file(spec, split)
        if path is None:
            return None, None
        return read_located_records(path), path
    if split not in available:
        return None, None
    rows = load_hub_table(spec["dataset"], spec["dataset_config"], split).to_list()
    return [(f"record {i}", row) for i, row in enumerate(rows, start=1)], f"{spec['dataset']}[{split}]"


def _spec(args, recorded: Optional[dict], first_split: str = "train") -> dict:
    mode = _check_source(args)
    if mode is None and recorded is not None:
        return dict(recorded)
    if mode == "files":
        spec = {
            "source": "files",
            "files": {
                split: str(Path(getattr(args, f"{split}_file")).resolve())
                for split in ("train", "validation", "test")
                if getattr(args, f"{split}_file", None)
            },
        }
    elif mode == "dataset" and args.dataset is None:  # a decoder task with no files: its hub data set
        hub, config = task_of(args).hub
        spec = {"source": "dataset", "dataset": hub, "dataset_config": config}
    elif mode == "dataset":
        spec = {"source": "dataset", "dataset": args.dataset, "dataset_config": args.dataset_config}
    else:
        raise UsageError(f"no data: pass --{first_split}-file (json/jsonl/csv/tsv/parquet records) or --dataset")
    spec["task_type"] = "causal-lm"
    if task_of(args) is not None:
        spec["task"] = args.task
    spec["prompt_column"] = getattr(args, "prompt_column", None) or (recorded or {}).get("prompt_column")
    spec["response_column"] = getattr(args, "response_column", None) or (recorded or {}).get("response_column")
    return spec


def resolve_instruction_data(
    args, needed: Sequence[str], recorded: Optional[dict] = None, require_response: bool = True
) -> Tuple[Dict[str, object], dict]:
    """Load and validate the (prompt, response) splits in ``needed`` (the first is required).

    :returns: ``({split: InstructionData}, spec)``; ``spec`` is JSON-able and reproduces them.
    """
    from pyro_monteclora.data.errors import DataError
    from pyro_monteclora.data.hf_datasets import hub_split_names
    from pyro_monteclora.data.instructions import records_to_instructions

    spec = _spec(args, recorded, needed[0])
    splits = {}
    try:
        available = hub_split_names(spec["dataset"], spec["dataset_config"]) if spec["source"] == "dataset" else None
        for split in needed:
            rows, source = _located_rows(spec, split, available)
            if rows is not None:
                splits[split] = records_to_instructions(
                    rows, source, spec["prompt_column"], spec["response_column"], require_response
                )
    except (DataError, OSError) as error:
        raise UsageError(str(error)) from None
    if needed[0] not in splits:
        raise UsageError(f"no {needed[0]} data: pass --{needed[0]}-file (or --dataset)")
    return splits, spec


def load_multiple_choice_split(args, split: str = "test", recorded: Optional[dict] = None):
    """The multiple-choice questions of ``--<split>-file`` or ``--dataset``'s split.

    For a commonsense task (``--task piqa``, or the task recorded with the checkpoint) the records
    are LLM-Adapters' ``commonsense_15k`` ones, each option scored as the trained response (see
    :mod:`pyro_monteclora.data.tasks`); with no data on the command line the recorded split is read.

    :returns: ``(MultipleChoiceData, spec)``.
    """
    from pyro_monteclora.data.errors import DataError
    from pyro_monteclora.data.hf_datasets import hub_split_names
    from pyro_monteclora.data.multiple_choice import records_to_multiple_choice

    task = task_of(args, recorded)
    commonsense = task is not None and task.kind == "multiple-choice"
    spec = _spec(args, recorded if commonsense and data_mode(args) is None else None, split)
    try:
        available = hub_split_names(spec["dataset"], spec["dataset_config"]) if spec["source"] == "dataset" else None
        rows, source = _located_rows(spec, split, available)
        if rows is None:
            wanted = (
                "instruction, input, output and answer (commonsense_15k)"
                if commonsense
                else "question, choices and answer"
            )
            raise UsageError(f"--multiple-choice: no {split} data; pass --{split}-file F.jsonl with {wanted} fields")
        if commonsense and not getattr(args, "task", None) and rows and "instruction" not in rows[0][1]:
            commonsense = False  # a commonsense checkpoint scoring question/choices/answer records
        if commonsense:
            from pyro_monteclora.data.tasks import commonsense_to_multiple_choice

            spec["task"] = task.name
            return commonsense_to_multiple_choice(task, rows, source), spec
        spec.pop("task", None)
        spec["task_type"] = "multiple-choice"
        return records_to_multiple_choice(rows, source), spec
    except (DataError, OSError) as error:
        raise UsageError(str(error)) from None
