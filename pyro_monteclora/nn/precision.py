"""Mixed precision: a frozen base in bf16/fp16, adapters and sampler math in fp32.

MonteCLoRA perturbs the adapter factor by :math:`s \\lVert\\pi\\rVert L Z` with :math:`s` as small as
:math:`10^{-6}` for large decoders, far below bf16's resolution (:math:`2^{-8}` relative). So:

* the frozen base may be **loaded** in half precision (:func:`cast_frozen`: half the weights'
  memory, though not half a step's on the CPU; see *Memory with a bf16 base* in the docs' getting
  started) and **run** under ``torch.autocast`` (:func:`autocast`);
* every trainable tensor (the adapters' :math:`M` and :math:`B`, a classification head, the guide)
  stays fp32, and AdamW updates fp32 values;
* the Bartlett and Dirichlet draws, the perturbation and the adapter's low-rank product run in fp32
  with autocast off (:class:`~pyro_monteclora.nn.layers.MonteCLoRALinear`); only the sum with the
  base layer's output is rounded back, once, so a bf16 output keeps the perturbation in whole bf16
  steps: it moves with probability :math:`\\min(1, |\\Delta y| / \\delta(y))`, :math:`\\delta(y)`
  the bf16 spacing at :math:`y` (see *Precision* in the docs' method page).

``fp16`` training on CUDA uses a ``torch.amp.GradScaler`` (in :func:`~pyro_monteclora.training.svi.fit`);
``bf16`` needs none. fp16 on the CPU is refused: its matrix products are emulated and slow.

>>> check_precision("bf16", "cpu")
torch.bfloat16
"""

from __future__ import annotations

import contextlib
from typing import Optional, Union

import torch
from torch import nn

__all__ = ["DTYPES", "check_precision", "autocast", "cast_frozen", "device_type"]

#: ``--dtype`` names and their torch dtypes
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def device_type(device: Union[str, torch.device]) -> str:
    """``"cuda"`` or ``"cpu"`` (what ``torch.autocast`` takes)."""
    return torch.device(device).type


def check_precision(name: str, device: Union[str, torch.device]) -> torch.dtype:
    """The dtype for ``name`` (``fp32``, ``bf16`` or ``fp16``) if ``device`` can run it.

    :raises ValueError: an unknown name, fp16 on a CPU, or bf16 on a GPU without bf16 support,
        with the allowed values in the message.
    """
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {name!r}")
    kind = device_type(device)
    if name == "fp16" and kind == "cpu":
        raise ValueError(
            "dtype fp16 needs a CUDA device (CPU fp16 matrix products are emulated); use bf16 or fp32 on the CPU"
        )
    if name == "bf16" and kind == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"dtype bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    return DTYPES[name]


def autocast(device: Union[str, torch.device], dtype: Optional[torch.dtype]):
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing for fp32 / ``None``."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type(device), dtype=dtype)


def cast_frozen(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast the **frozen** floating-point parameters and buffers of ``module`` to ``dtype``;
    trainable parameters stay fp32 (a head in bf16 would lose AdamW's small updates)."""
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.is_floating_point():
                parameter.data = parameter.data.to(dtype if not parameter.requires_grad else torch.float32)
        for sub in module.modules():
            for name, buffer in list(sub.named_buffers(recurse=False)):
                if buffer is not None and buffer.is_floating_point() and "inv_freq" not in name:
                    setattr(sub, name, buffer.to(dtype))
    return module
