"""What a resumed run needs besides the model: optimiser, schedule, random state, progress.

:class:`TrainingState` is what :func:`~pyro_monteclora.fit` hands to its callbacks (``on_epoch_end``)
and takes back as ``resume=``. :func:`save_training_state` writes it next to a saved model as
``training_state.safetensors`` (the optimiser's moment tensors and the torch random state) and
``training_state.json`` (the step, the epoch, the learning-rate schedule, Python's and NumPy's random
state and the loss history): no pickle. Restoring all of it makes a resumed run draw the same noise,
dropout masks and data order as an uninterrupted one, so it ends with the same parameters.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from safetensors.torch import save_file

from .atomic import atomic_file, atomic_write_json

__all__ = ["TrainingState", "save_training_state", "load_training_state", "capture_rng_state",
           "restore_rng_state", "STATE_TENSORS", "STATE_JSON"]

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"


@dataclass
class TrainingState:
    """The state of :func:`~pyro_monteclora.fit` at the end of an epoch.

    :ivar epoch: epochs completed.
    :ivar step: optimiser steps taken.
    :ivar optimizer: ``optimizer.state_dict()``.
    :ivar scheduler: ``scheduler.state_dict()``.
    :ivar rng: :func:`capture_rng_state` at the end of the epoch (after any evaluation).
    :ivar history: :class:`~pyro_monteclora.FitResult` as a dict.
    """

    epoch: int
    step: int
    optimizer: Dict[str, Any]
    scheduler: Dict[str, Any]
    rng: Dict[str, Any]
    history: Dict[str, Any] = field(default_factory=dict)


def capture_rng_state() -> Dict[str, Any]:
    """torch (CPU and every CUDA device), Python ``random`` and NumPy generator states."""
    state = {"torch": torch.get_rng_state(), "random": random.getstate(),
             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state` (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_json(value):
    if isinstance(value, tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def save_training_state(directory: Union[str, os.PathLike], state: TrainingState) -> None:
    """Write ``state`` into ``directory`` (safetensors + JSON, each written atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: Dict[str, torch.Tensor] = {"rng.torch": state.rng["torch"].clone()}
    for index, cuda_state in enumerate(state.rng.get("cuda", [])):
        tensors[f"rng.cuda.{index}"] = cuda_state.clone()
    optimizer_state = {}
    for index, slots in state.optimizer["state"].items():
        plain = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value.detach().to("cpu", copy=True).contiguous()
            else:
                plain[key] = value
        optimizer_state[str(index)] = plain
    numpy_state = state.rng["numpy"]
    record = {
        "epoch": state.epoch,
        "step": state.step,
        "optimizer": {"param_groups": _to_json(state.optimizer["param_groups"]),
                      "state": optimizer_state},
        "scheduler": _to_json({k: v for k, v in state.scheduler.items() if k != "lr_lambdas"}),
        "rng": {"random": _to_json(state.rng["random"]),
                "numpy": [numpy_state[0], _to_json(numpy_state[1])] + _to_json(list(numpy_state[2:])),
                "cuda_devices": len(state.rng.get("cuda", []))},
        "history": state.history,
    }
    with atomic_file(directory / STATE_TENSORS) as temporary:
        save_file(tensors, str(temporary))
    atomic_write_json(directory / STATE_JSON, record)


def load_training_state(directory: Union[str, os.PathLike]) -> Optional[TrainingState]:
    """Read what :func:`save_training_state` wrote (``None`` if the folder has no state)."""
    from .serialization import CheckpointError, _read_tensors

    directory = Path(directory)
    if not (directory / STATE_JSON).is_file():
        return None
    try:
        record = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{directory / STATE_JSON} is not valid JSON: {error}") from None
    tensors = _read_tensors(directory / STATE_TENSORS)
    optimizer_state = {}
    for index, plain in record["optimizer"]["state"].items():
        slots = dict(plain)
        prefix = f"optimizer.{index}."
        slots.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        optimizer_state[int(index)] = slots
    param_groups = record["optimizer"]["param_groups"]
    for group in param_groups:
        if "betas" in group:
            group["betas"] = tuple(group["betas"])
    version, internal, gauss = record["rng"]["random"]
    numpy_state = record["rng"]["numpy"]
    rng = {"torch": tensors["rng.torch"], "random": (version, tuple(internal), gauss),
           "numpy": (numpy_state[0], np.asarray(numpy_state[1], dtype=np.uint32), *numpy_state[2:])}
    if record["rng"].get("cuda_devices"):
        rng["cuda"] = [tensors[f"rng.cuda.{i}"] for i in range(record["rng"]["cuda_devices"])]
    scheduler = dict(record["scheduler"], lr_lambdas=[None] * len(param_groups))
    return TrainingState(epoch=record["epoch"], step=record["step"],
                         optimizer={"state": optimizer_state, "param_groups": param_groups},
                         scheduler=scheduler, rng=rng, history=record.get("history", {}))

