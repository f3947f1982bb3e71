"""Options shared by the commands and their validation; where the model comes from.

The data sources are in :mod:`pyro_monteclora.cli.sources`, the output checks in
:mod:`pyro_monteclora.cli.outputs`.

Everything here runs before any work: a bad option or bad data raises :class:`UsageError`, which
``main`` prints as one line on stderr before exiting with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from safetensors import SafetensorError

from pyro_monteclora.validation import MAX_SEED, FieldError, check_value, number_problem

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
    "MAX_SEED",
    "LOAD_ERRORS",
    "load_error",
    "resolve_model_path",
    "resolve_device",
    "add_dtype_option",
    "resolve_precision",
    "TASKS",
    "METHODS",
    "ADAPTER_OPTION_OVERRIDES",
]

from pyro_monteclora.config import MonteCLoRAConfig
from pyro_monteclora.data.tasks import TASKS as TASK_SPECS
from pyro_monteclora.infer.methods import METHOD_NAMES

TASKS = tuple(TASK_SPECS)
#: ``train --method``: MonteCLoRA, point-estimate LoRA, full fine-tuning and the calibration
#: baselines (:mod:`pyro_monteclora.infer.methods`)
METHODS = METHOD_NAMES
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
        "gsm8k) read --train-file, --validation-file and --test-file of their schema, or the hub when none are "
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
    group.add_argument(
        "--dataset",
        default=None,
        help="a Hugging Face hub data set (needs network), or the folder of a Dataset or DatasetDict "
        "saved with save_to_disk (its train/validation/test splits)",
    )
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
            help="monteclora (Bayesian LoRA), lora (point-estimate LoRA), full fine-tuning, or a calibration "
            "baseline: mc-dropout (LoRA with its adapter dropout kept on when predicting), checkpoint-ensemble "
            "(the last --ensemble-size epochs), deep-ensemble (--ensemble-size seeded LoRA runs), laplace "
            "(Laplace-LoRA fitted after training), blob (a mean-field Gaussian over A)",
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
