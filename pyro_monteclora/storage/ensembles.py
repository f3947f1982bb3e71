"""Ensemble members inside a checkpoint folder: one safetensors file, one JSON record.

A checkpoint folder (see :mod:`~pyro_monteclora.storage.checkpoint`) holds one model. An ensemble
(a deep ensemble of independently seeded runs, or the paper's checkpoint ensemble of the last
:math:`K` epochs of one run) adds the trained tensors of each member beside it:

``ensemble.safetensors``
    ``member<k>.<name>`` for member :math:`k = 0 .. M-1` and every ``<name>`` that
    :func:`~pyro_monteclora.storage.checkpoint.trained_tensors` lists (``network.*``, ``guide.*``);
``ensemble.json``
    the format tag and version, the kind (``"deep"`` or ``"checkpoint"``), one free-form record
    per member (its seed, its epoch, ...) and the tensor names and shapes of one member.

All members share the folder's base model, configuration and guide class, so an ensemble costs
:math:`M` times the trained tensors (a few MiB for LoRA), not :math:`M` base models. Nothing is
unpickled; a file whose tensors do not match its record is refused.

>>> import tempfile, torch
>>> members = [{"network.w": torch.zeros(2)}, {"network.w": torch.ones(2)}]
>>> with tempfile.TemporaryDirectory() as folder:
...     _ = save_ensemble_members(folder, members, "deep", [{"seed": 0}, {"seed": 1}])
...     kind, details, loaded = read_ensemble_members(folder)
>>> kind, details, loaded[1]["network.w"].tolist()
('deep', [{'seed': 0}, {'seed': 1}], [1.0, 1.0])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pyro_monteclora.storage.atomic import atomic_file, atomic_write_json
from pyro_monteclora.storage.checkpoint import CheckpointError
from pyro_monteclora.validation import FieldError, get_field, parse_json

__all__ = [
    "save_ensemble_members",
    "read_ensemble_members",
    "ENSEMBLE_KINDS",
    "ENSEMBLE_NAME",
    "ENSEMBLE_WEIGHTS_NAME",
]

ENSEMBLE_NAME = "ensemble.json"
ENSEMBLE_WEIGHTS_NAME = "ensemble.safetensors"
ENSEMBLE_FORMAT = "pyro-monteclora-ensemble"
ENSEMBLE_VERSION = 1
#: ``"deep"``: independently seeded runs; ``"checkpoint"``: the last epochs of one run.
ENSEMBLE_KINDS = ("deep", "checkpoint")

Tensors = Dict[str, torch.Tensor]


def _check_members(members: Sequence[Tensors]) -> Dict[str, list]:
    if len(members) < 1:
        raise ValueError("an ensemble needs at least 1 member, got 0")
    shapes = {name: list(t.shape) for name, t in members[0].items()}
    for index, member in enumerate(members[1:], start=1):
        if {name: list(t.shape) for name, t in member.items()} != shapes:
            raise ValueError(f"ensemble member {index} has other tensors than member 0 (names or shapes differ)")
    return shapes


def save_ensemble_members(
    directory: Union[str, os.PathLike], members: Sequence[Tensors], kind: str, details: Sequence[dict]
) -> Path:
    """Write ``members`` (each a ``{name: tensor}`` of one member's trained tensors) of ``kind``
    into ``directory``, each file written to a temporary name and renamed, the JSON last.

    :param details: one JSON-able record per member (a seed, an epoch).
    """
    if kind not in ENSEMBLE_KINDS:
        raise ValueError(f"ensemble kind must be one of {list(ENSEMBLE_KINDS)}, got {kind!r}")
    if len(details) != len(members):
        raise ValueError(f"{len(members)} ensemble members but {len(details)} member records")
    shapes = _check_members(members)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    flat = {
        f"member{index}.{name}": tensor.detach().to("cpu", copy=True).contiguous()
        for index, member in enumerate(members)
        for name, tensor in member.items()
    }
    with atomic_file(directory / ENSEMBLE_WEIGHTS_NAME) as temporary:
        save_file(flat, str(temporary), metadata={"format": "pt"})
    record = {
        "format": ENSEMBLE_FORMAT,
        "format_version": ENSEMBLE_VERSION,
        "kind": kind,
        "members": [dict(d) for d in details],
        "tensors": shapes,
    }
    atomic_write_json(directory / ENSEMBLE_NAME, record)
    return directory


def _read_record(path: Path) -> dict:
    try:
        record = parse_json(path.read_text(encoding="utf-8"))
        if get_field(record, "format", "format", "text") != ENSEMBLE_FORMAT:
            raise CheckpointError(f"{path}: not a pyro-monteclora ensemble record (format must be {ENSEMBLE_FORMAT!r})")
        version = get_field(record, "format_version", "format_version", "integer")
        if version != ENSEMBLE_VERSION:
            raise CheckpointError(f"{path}: format_version must be {ENSEMBLE_VERSION}, got {version}")
        kind = get_field(record, "kind", "kind", "text")
        if kind not in ENSEMBLE_KINDS:
            raise CheckpointError(f"{path}: kind must be one of {list(ENSEMBLE_KINDS)}, got {kind!r}")
        members = get_field(record, "members", "members", "list")
        if not members or not all(isinstance(m, dict) for m in members):
            raise CheckpointError(f"{path}: members must be a non-empty list of objects")
        get_field(record, "tensors", "tensors", "object")
    except FieldError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (UnicodeDecodeError, ValueError) as error:  # JSONDecodeError is a ValueError
        raise CheckpointError(f"{path}: not readable JSON ({error})") from None
    return record


def read_ensemble_members(directory: Union[str, os.PathLike]) -> Optional[Tuple[str, List[dict], List[Tensors]]]:
    """``(kind, member records, member tensors)`` of the ensemble saved in ``directory``, or
    ``None`` if it holds none.

    :raises CheckpointError: a record or tensor file that is unreadable or does not match.
    """
    directory = Path(directory)
    path = directory / ENSEMBLE_NAME
    if not path.is_file():
        return None
    record = _read_record(path)
    weights = directory / ENSEMBLE_WEIGHTS_NAME
    try:
        flat = load_file(str(weights))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({error})") from None
    count = len(record["members"])
    members: List[Tensors] = [{} for _ in range(count)]
    for key, tensor in flat.items():
        head, _, name = key.partition(".")
        index = int(head[6:]) if head.startswith("member") and head[6:].isdigit() else -1
        if not 0 <= index < count:
            raise CheckpointError(f"{weights}: unexpected tensor {key!r} (not one of {count} members)")
        members[index][name] = tensor
    for index, member in enumerate(members):
        if {name: list(t.shape) for name, t in member.items()} != record["tensors"]:
            raise CheckpointError(
                f"{weights}: member {index} does not hold the tensors that {ENSEMBLE_NAME} lists "
                f"(a partial or mixed ensemble)"
            )
        if any(not t.is_floating_point() for t in member.values()):
            raise CheckpointError(f"{weights}: member {index} holds a tensor that is not floating point")
    return record["kind"], record["members"], members
