"""Registration of plain ``nn.Parameter`` objects with Pyro's global parameter store.

MonteCLoRA's parameters live inside ordinary HF modules, which ``PyroModule`` does not see. To keep
``pyro.infer.SVI`` with a ``pyro.optim`` optimiser working, the model and guide announce their
trainable parameters with ``pyro.param`` on every call, under a per-instance prefix so two models in
one process never share an entry. With ``pyro.settings.set(module_local_params=True)`` nothing is
registered: Pyro then expects ``Trace_ELBO()(model, guide)`` and a torch optimiser, as
:func:`~pyro_monteclora.fit` uses in both modes.
"""

from __future__ import annotations

import itertools
from typing import Iterable, Tuple

import pyro
import torch

__all__ = ["register_parameters", "unique_prefix"]

_COUNTER = itertools.count()


def unique_prefix(stem: str) -> str:
    """``stem`` the first time in a process, then ``stem_1``, ``stem_2``, ..."""
    index = next(_COUNTER)
    return stem if index == 0 else f"{stem}_{index}"


def register_parameters(prefix: str, named_parameters: Iterable[Tuple[str, torch.Tensor]]) -> None:
    """``pyro.param(prefix + "." + name, p)`` for every trainable ``p`` (global-store mode only)."""
    if pyro.settings.get("module_local_params"):
        return
    for name, parameter in named_parameters:
        if not parameter.requires_grad:
            continue
        fullname = f"{prefix}.{name}"
        stored = pyro.param(fullname, parameter)
        if stored.unconstrained() is not parameter:
            raise ValueError(
                f"Pyro's param store already holds a different tensor named {fullname!r}; "
                f"call pyro.clear_param_store(), give this model another name=, or enable "
                f"pyro.settings.set(module_local_params=True)"
            )
