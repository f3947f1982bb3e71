"""Which base model a checkpoint was made for: its description, a fingerprint of its frozen
weights, and whether a base at hand is that one (:mod:`~pyro_monteclora.storage.checkpoint`
records and checks them; the quantisation is :mod:`pyro_monteclora.quantization`'s record).

The fingerprint is the first 32 entries of the first adapted layer's frozen weight, de-quantised
for a quantised base. Two records of one base agree to bf16's precision when both are loaded the
same way; an fp32 record and a 4-bit base (or the other way round) agree within
:data:`QUANTIZED_FINGERPRINT_TOLERANCE` of the first 64-weight block's absmax, the bound of NF4's
rounding: :math:`|\\hat W_0 - W_0| \\le 0.152\\, a + |a' - a|`.
"""

from __future__ import annotations

from typing import List, Optional

import torch

from pyro_monteclora.quantization import Quantization, dequantized_weight, describe_quantization

__all__ = [
    "describe_base",
    "base_fingerprint",
    "same_base",
    "recorded_quantization",
    "QUANTIZED_FINGERPRINT_TOLERANCE",
]


def _first_weights(model, count: int) -> Optional[torch.Tensor]:
    """The first ``count`` entries of the first adapted layer's frozen weight, de-quantised for a
    quantised base (``None`` without adapters)."""
    adapters = model.adapters()
    if not adapters:
        return None
    return dequantized_weight(next(iter(adapters.values())).base_layer).flatten()[:count].cpu()


def base_fingerprint(model) -> Optional[List[float]]:
    """The first 32 entries of the first adapted layer's frozen weight (de-quantised, for a
    quantised base): they tell two same-shaped bases apart, and survive loading the base in
    bf16/fp16 (compared with a tolerance)."""
    weights = _first_weights(model, 32)
    return None if weights is None else [round(float(v), 6) for v in weights]


#: how far a 4-bit weight may be from its fp32 value, relative to the absmax of its block of 64:
#: half NF4's widest gap between code values (-1 to -0.696: 0.152) plus the error of the block's
#: double-quantised scale, which reaches a few percent for heavy-tailed weights; 0.25 leaves room
#: for both, and two different bases still differ by more than it in nearly every entry
QUANTIZED_FINGERPRINT_TOLERANCE = 0.25


def same_base(recorded: Optional[List[float]], model, recorded_quantization=None) -> bool:
    """Whether ``model``'s base has the frozen weights of the recorded fingerprint: to bf16's
    precision, or, when one side is quantised and the other is not (or quantised otherwise), each
    entry within :data:`QUANTIZED_FINGERPRINT_TOLERANCE` times the absmax of the first block of 64
    weights (read from the base at hand: a quantised block's largest entry is its stored scale)."""
    block = _first_weights(model, 64)  # de-quantised once: the fingerprint is its first 32
    if recorded is None or block is None:
        return True
    current = torch.tensor([round(float(v), 6) for v in block[:32]])
    if len(recorded) != len(current):
        return False
    recorded = torch.tensor(recorded)
    if recorded_quantization != _quantization_record(model.network):
        atol = QUANTIZED_FINGERPRINT_TOLERANCE * float(torch.maximum(block.abs().max(), recorded.abs().max()))
        return bool(((recorded - current).abs() <= atol + 1e-6).all())
    return torch.allclose(recorded, current, rtol=1e-2, atol=1e-3)


def _quantization_record(network) -> Optional[dict]:
    quantization = describe_quantization(network)
    return quantization.to_dict() if quantization is not None else None


def describe_base(network) -> dict:
    """The JSON description of ``network`` a checkpoint's ``base_model`` holds (the fingerprint
    aside): its ``name_or_path``, class, ``model_type``, labels, pad id and quantisation."""
    config = getattr(network, "config", None)
    return {
        "name_or_path": str(getattr(config, "_name_or_path", "") or ""),
        "architecture": type(network).__name__,
        "model_type": getattr(config, "model_type", None),
        "num_labels": getattr(config, "num_labels", None),
        "pad_token_id": getattr(config, "pad_token_id", None),
        "quantization": _quantization_record(network),
    }


def recorded_quantization(record: dict) -> Optional[Quantization]:
    """The quantisation of the base a checkpoint was trained on (``None``: not quantised)."""
    described = record["base_model"].get("quantization")
    return Quantization.from_dict(described, "base_model.quantization") if described is not None else None
