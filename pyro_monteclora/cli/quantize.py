"""``train --quantize 4bit|8bit``: the command line's side of quantised frozen bases
(:mod:`pyro_monteclora.quantization` holds the quantisation itself).

Everything a quantised run can refuse is refused here before anything is loaded or written (one
line, exit 2): a method that trains or differentiates through the frozen weights, a missing
bitsandbytes, a device it cannot run on, a resume that would change the compute dtype. The base
then loads quantised straight onto this process's device, with the modules the run trains kept
in full precision (:func:`load_options`, :func:`unquantized_fresh_modules`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import List, Optional

from pyro_monteclora.cli.options import UsageError, _names

__all__ = [
    "check_quantize_options",
    "resolve_quantization",
    "load_options",
    "unquantized_fresh_modules",
    "check_resumed_compute_dtype",
]

#: torch dtype names as ``--dtype`` spells them
_DTYPE_OPTIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def check_quantize_options(args) -> None:
    """Refuse ``--quantize`` with a method that cannot use a quantised base, and
    ``--site-layout stacked`` with BLoB's prior."""
    if args.quantize is not None and args.method == "full":
        raise UsageError(
            f"--quantize {args.quantize} freezes the base in {args.quantize[0]} bits, and --method full trains every "
            f"weight: quantise with --method monteclora, lora, blob or the other adapter methods"
        )
    if args.quantize is not None and args.method == "laplace":
        raise UsageError(
            f"--quantize {args.quantize} with --method laplace: laplace-torch's Jacobians (torch.func) do not "
            f"pass through bitsandbytes' quantised layers; fit Laplace-LoRA on an unquantised base"
        )
    if args.method == "blob" and getattr(args, "site_layout", None) == "stacked":
        raise UsageError(
            "--site-layout stacked covers the wishart-mixture prior's sites; --method blob (BLoB's Gaussian "
            "prior) keeps --site-layout per-layer"
        )


def resolve_quantization(arguments: dict, device, torch_dtype):
    """The :class:`~pyro_monteclora.quantization.Quantization` ``--quantize`` asks for, once
    bitsandbytes has run one such layer on this process's device (``None`` without
    ``--quantize``); a missing bitsandbytes or a device it cannot use is exit 2."""
    from pyro_monteclora.distributed import local_device
    from pyro_monteclora.quantization import Quantization, QuantizationError, check_quantization_device

    name = arguments.get("quantize")
    if name is None:
        return None
    try:
        quantization = Quantization.from_name(name, compute_dtype=torch_dtype)
        check_quantization_device(quantization, local_device(device))
    except QuantizationError as error:
        raise UsageError(f"--quantize {name}: {error}") from None
    return quantization


def load_options(quantization, device, modules_to_save: Optional[str] = None, fresh: List[str] = ()) -> dict:
    """``from_pretrained``'s ``quantization_config`` and ``device_map`` for ``quantization``, with
    the run's ``--modules-to-save`` (comma-separated) and the ``fresh`` modules in full precision."""
    from pyro_monteclora.distributed import local_device

    keep = tuple(_names(modules_to_save) or ()) + tuple(fresh)
    quantization = dataclasses.replace(quantization, skip_modules=quantization.skip_modules + keep)
    return quantization.from_pretrained_kwargs(local_device(device))


def unquantized_fresh_modules(network, loading) -> List[str]:
    """The modules ``from_pretrained`` initialised afresh (the base file lacks them: DeBERTa's
    pooler, say) that it quantised: they are trained with the head, so the base must be loaded
    again with them in full precision."""
    from pyro_monteclora.hf_defaults import newly_initialised_modules
    from pyro_monteclora.quantization import quantized_layer_names

    return [path for path in newly_initialised_modules(loading) if quantized_layer_names(network.get_submodule(path))]


def check_resumed_compute_dtype(checkpoint: Path, quantization: Optional[object]) -> None:
    """``--dtype`` is not a run option, but it sets a 4-bit base's compute dtype: a resume must
    multiply as the run did (exit 2 otherwise, before the base is loaded)."""
    from pyro_monteclora.storage.bases import recorded_quantization
    from pyro_monteclora.storage.checkpoint import read_saved_config

    recorded = recorded_quantization(read_saved_config(checkpoint))
    if quantization is not None and recorded is not None and recorded.compute_dtype != quantization.compute_dtype:
        raise UsageError(
            f"--resume: the run's {recorded.name} base computes in {recorded.compute_dtype}; resume it with "
            f"--dtype {_DTYPE_OPTIONS[recorded.compute_dtype]} (this command gives {quantization.compute_dtype})"
        )
