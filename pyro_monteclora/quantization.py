"""Quantised frozen bases (QLoRA-style): 4-bit NF4/FP4 and 8-bit LLM.int8 through bitsandbytes.

The frozen base weight :math:`W_0` is stored in 4 or 8 bits and de-quantised block by block inside
each product; everything that is trained or sampled stays fp32: the adapters' :math:`M` and
:math:`B`, the guide, the Wishart/Dirichlet draws and the perturbation
:math:`s \\lVert\\pi\\rVert L Z`, and the classification head (never quantised: it is trained).
A 4-bit layer computes :math:`\\hat W_0 x` with :math:`\\hat W_0 = \\operatorname{deq}(q(W_0))`
(in its compute dtype), so the adapter layer on it is

.. math::

    y = \\hat W_0 x + b + \\gamma\\, B A\\, x, \\qquad
    |\\hat W_0 - W_0|_{ij} \\le \\epsilon\\, a_{ij} + |a'_{ij} - a_{ij}|,

with :math:`a_{ij}` the absmax of the weight's block, :math:`a'_{ij}` the value stored for it (the
same, unless double quantisation rounds it too) and :math:`\\epsilon` half the widest gap
between neighbouring code values: 0.152 for NF4 (its two lowest levels are :math:`-1` and
:math:`-0.696`; one absmax per block of 64 weights) and :math:`1/254` for
LLM.int8 (one absmax per output row; the weight is rounded to fp16 first, which adds up to
:math:`2^{-11} a`; LLM.int8 also rounds each activation row to int8, so its layer is not exactly
:math:`\\hat W_0 x`). ``tests/test_quantization.py`` checks both bounds entry by entry.

A :class:`Quantization` is what a checkpoint records (``monteclora_config.json``'s
``base_model.quantization``), so ``evaluate``, ``predict``, ``generate`` and
:func:`~pyro_monteclora.load_pretrained` load the same quantised base again.

>>> Quantization.from_name("4bit").to_dict()["quant_type"]
'nf4'
>>> Quantization.from_name("8bit").bits
8
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import re
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from pyro_monteclora.validation import get_field

__all__ = [
    "QUANTIZE_CHOICES",
    "INSTALL_HINT",
    "NEVER_QUANTIZED",
    "Quantization",
    "QuantizationError",
    "require_bitsandbytes",
    "check_quantization_device",
    "describe_quantization",
    "is_quantized_linear",
    "quantized_layer_names",
    "linear_shape",
    "dequantized_weight",
    "quiet_int8_input_cast",
    "prepare_quantized_layer",
]

#: ``--quantize`` names
QUANTIZE_CHOICES: Tuple[str, ...] = ("4bit", "8bit")
#: how to get bitsandbytes
INSTALL_HINT = 'pip install "pyro-monteclora[quantize]" (bitsandbytes>=0.50)'
#: modules that stay in full precision: the output embedding and the classification heads, which
#: are trained (``modules_to_save``) or feed the likelihood directly
NEVER_QUANTIZED: Tuple[str, ...] = ("lm_head", "pre_classifier", "classifier", "score")

_QUANT_TYPES = {4: ("nf4", "fp4"), 8: ("int8",)}
_COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_BNB_LINEAR = {"Linear4bit": 4, "Linear8bitLt": 8}
_DEVICE_CHECKS: Dict[tuple, Optional[str]] = {}


_COMPONENT = r"(?:.*\.)?"  # a skip pattern's prefix: any path before the named component


def _skip_name(pattern: str) -> str:
    """The module name a :meth:`Quantization.skip_patterns` pattern was made from (a plain name
    as it is)."""
    if pattern.startswith(_COMPONENT):
        return re.sub(r"\\(.)", r"\1", pattern[len(_COMPONENT) :])
    return pattern


def _choices(values) -> str:
    return ", ".join(repr(value) for value in values)


class QuantizationError(ValueError):
    """A quantisation that cannot be used: bitsandbytes is missing, the device cannot run it, or a
    recorded quantisation is malformed."""


@dataclass(frozen=True)
class Quantization:
    """How the frozen base is quantised (bitsandbytes; what a checkpoint records).

    :param int bits: 4 (``Linear4bit``) or 8 (``Linear8bitLt``, LLM.int8).
    :param str quant_type: ``"nf4"`` or ``"fp4"`` for 4 bits, ``"int8"`` for 8.
    :param bool double_quant: 4-bit only: quantise the per-block absmax constants too (QLoRA's
        double quantisation, about 0.4 bits per weight saved).
    :param str compute_dtype: the dtype a 4-bit layer de-quantises to and multiplies in
        (``"float32"``, ``"bfloat16"``, ``"float16"``).
    :param skip_modules: module names kept in full precision, with everything under them (a path
        component of that name, :meth:`skip_patterns`); :data:`NEVER_QUANTIZED` is always added.
    :param float threshold: 8-bit only: LLM.int8's outlier threshold (input columns above it run in
        16 bits on the GPU).
    """

    bits: int
    quant_type: str = "nf4"
    double_quant: bool = True
    compute_dtype: str = "float32"
    skip_modules: Tuple[str, ...] = ()
    threshold: float = 6.0

    def __post_init__(self):
        if self.bits not in _QUANT_TYPES:
            raise QuantizationError(f"Quantization.bits must be one of {_choices(_QUANT_TYPES)}, got {self.bits!r}")
        if self.quant_type not in _QUANT_TYPES[self.bits]:
            raise QuantizationError(
                f"Quantization.quant_type for {self.bits} bits must be one of "
                f"{_choices(_QUANT_TYPES[self.bits])}, got {self.quant_type!r}"
            )
        if self.compute_dtype not in _COMPUTE_DTYPES:
            raise QuantizationError(
                f"Quantization.compute_dtype must be one of {_choices(_COMPUTE_DTYPES)}, got {self.compute_dtype!r}"
            )
        if not (isinstance(self.threshold, (int, float)) and self.threshold > 0):
            raise QuantizationError(f"Quantization.threshold must be a number > 0, got {self.threshold!r}")
        if self.bits == 8 and self.double_quant:
            raise QuantizationError("Quantization.double_quant applies to 4 bits only; 8 bits takes False")
        skip = tuple(dict.fromkeys(tuple(NEVER_QUANTIZED) + tuple(self.skip_modules)))
        object.__setattr__(self, "skip_modules", skip)

    @property
    def name(self) -> str:
        """``"4bit"`` or ``"8bit"`` (the ``--quantize`` value)."""
        return f"{self.bits}bit"

    @classmethod
    def from_name(
        cls, name: str, compute_dtype: torch.dtype = torch.float32, skip_modules: Sequence[str] = ()
    ) -> "Quantization":
        """The quantisation ``--quantize name`` means: NF4 with double quantisation for ``"4bit"``,
        LLM.int8 for ``"8bit"``; ``compute_dtype`` is the base's dtype (``--dtype``)."""
        if name not in QUANTIZE_CHOICES:
            raise QuantizationError(f"quantize must be one of {_choices(QUANTIZE_CHOICES)}, got {name!r}")
        dtype_name = next((key for key, value in _COMPUTE_DTYPES.items() if value == compute_dtype), None)
        if dtype_name is None:
            raise QuantizationError(
                f"the compute dtype (--dtype) must be one of torch.float32, torch.bfloat16, torch.float16, "
                f"got {compute_dtype!r}"
            )
        if name == "4bit":
            return cls(4, "nf4", True, dtype_name, tuple(skip_modules))
        return cls(8, "int8", False, dtype_name, tuple(skip_modules))

    def to_dict(self) -> dict:
        """A JSON-ready record (``method`` is ``"bitsandbytes"``)."""
        record = dataclasses.asdict(self)
        record["skip_modules"] = list(self.skip_modules)
        return {"method": "bitsandbytes", **record}

    @classmethod
    def from_dict(cls, record, source: str = "quantization") -> "Quantization":
        """Read :meth:`to_dict`'s record back, field by field (a bad one names ``source``)."""
        from pyro_monteclora.validation import FieldError, check_value

        check_value(source, record, "object")
        check_value(f"{source}.method", get_field(record, "method", f"{source}.method", "text"), ("bitsandbytes",))
        skip = get_field(record, "skip_modules", f"{source}.skip_modules", "list", default=[])
        for index, value in enumerate(skip):
            check_value(f"{source}.skip_modules[{index}]", value, "text")
        bits = get_field(record, "bits", f"{source}.bits", tuple(sorted(_QUANT_TYPES)))
        try:
            return cls(
                bits=bits,
                quant_type=get_field(record, "quant_type", f"{source}.quant_type", _QUANT_TYPES[bits]),
                double_quant=get_field(record, "double_quant", f"{source}.double_quant", "flag", default=False),
                compute_dtype=get_field(record, "compute_dtype", f"{source}.compute_dtype", tuple(_COMPUTE_DTYPES)),
                skip_modules=tuple(skip),
                threshold=get_field(
                    record, "threshold", f"{source}.threshold", "number", default=6.0, minimum=0, exclusive_minimum=True
                ),
            )
        except QuantizationError as error:
            raise FieldError(f"{source}: {error}") from None

    @property
    def torch_compute_dtype(self) -> torch.dtype:
        """:attr:`compute_dtype` as a torch dtype."""
        return _COMPUTE_DTYPES[self.compute_dtype]

    def to_transformers(self):
        """transformers' ``BitsAndBytesConfig`` for ``from_pretrained(quantization_config=...)``."""
        require_bitsandbytes()
        from transformers import BitsAndBytesConfig

        skip = self.skip_patterns()
        if self.bits == 4:
            return BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=self.quant_type,
                bnb_4bit_use_double_quant=self.double_quant,
                bnb_4bit_compute_dtype=self.torch_compute_dtype,
                llm_int8_skip_modules=skip,
            )
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=self.threshold, llm_int8_skip_modules=skip)

    def skip_patterns(self) -> list:
        """:attr:`skip_modules` as transformers' ``llm_int8_skip_modules`` patterns: a name keeps
        every module at or under a path component of that name (``pooler`` keeps
        ``bert.pooler.dense``; transformers alone would match only a prefix or a suffix).

        >>> import re
        >>> bool(re.match(Quantization(4, skip_modules=("pooler",)).skip_patterns()[-1], "bert.pooler.dense"))
        True
        """
        return [_COMPONENT + re.escape(name) for name in self.skip_modules]

    def from_pretrained_kwargs(self, device) -> dict:
        """``quantization_config`` and ``device_map`` for transformers' ``from_pretrained``: a
        quantised model is placed while it loads (it cannot be moved afterwards on every device)."""
        return {"quantization_config": self.to_transformers(), "device_map": {"": str(torch.device(device))}}


def require_bitsandbytes():
    """Import bitsandbytes, or raise :class:`QuantizationError` saying which extra installs it."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise QuantizationError(f"a quantised base needs bitsandbytes, which is not installed: {INSTALL_HINT}")
    import bitsandbytes

    return bitsandbytes


def check_quantization_device(quantization: Quantization, device) -> None:
    """Run one small quantised layer of ``quantization``'s kind forward and backward on ``device``.

    :raises QuantizationError: bitsandbytes is missing, or it cannot run this quantisation on
        ``device`` (its own error, first line, is quoted). Checked once per kind and device.
    """
    bnb = require_bitsandbytes()
    device = torch.device(device)
    key = (quantization.bits, quantization.quant_type, quantization.compute_dtype, str(device))
    if key not in _DEVICE_CHECKS:
        _DEVICE_CHECKS[key] = _try_device(bnb, quantization, device)
    problem = _DEVICE_CHECKS[key]
    if problem is not None:
        raise QuantizationError(
            f"bitsandbytes {getattr(bnb, '__version__', '?')} cannot run a {quantization.name} "
            f"({quantization.quant_type}) base on {device}: {problem}"
        )


def _try_device(bnb, quantization: Quantization, device: torch.device) -> Optional[str]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(64, 64, generator=generator)
    try:
        if quantization.bits == 4:
            layer = bnb.nn.Linear4bit(
                64, 64, bias=False, compute_dtype=quantization.torch_compute_dtype, quant_type=quantization.quant_type
            )
            layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type=quantization.quant_type)
        else:
            layer = bnb.nn.Linear8bitLt(64, 64, bias=False, has_fp16_weights=False, threshold=quantization.threshold)
            layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
        layer = layer.to(device)
        x = torch.randn(2, 64, generator=generator).to(device).requires_grad_(True)
        layer(x).float().sum().backward()
        if x.grad is None or not bool(torch.isfinite(x.grad).all()):
            return "its input gradient is missing or not finite"
    except Exception as error:  # noqa: BLE001 - any failure means: not on this device
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    return None


def is_quantized_linear(module: nn.Module) -> bool:
    """Whether ``module`` is a bitsandbytes ``Linear4bit`` or ``Linear8bitLt`` (checked by class
    name and module, so bitsandbytes is not imported)."""
    return type(module).__name__ in _BNB_LINEAR and type(module).__module__.startswith("bitsandbytes")


def quantized_layer_names(network: nn.Module) -> list:
    """The paths of ``network``'s quantised linear layers."""
    return [path for path, module in network.named_modules() if is_quantized_linear(module)]


def linear_shape(module: nn.Module) -> Tuple[int, int]:
    """``(d_out, d_in)`` of a linear layer, quantised (packed weight) or not; HF's ``Conv1D``
    stores ``(d_in, d_out)``."""
    if is_quantized_linear(module):
        return module.out_features, module.in_features
    if type(module).__name__ == "Conv1D":
        d_in, d_out = module.weight.shape
        return d_out, d_in
    return tuple(module.weight.shape)


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The weight a linear layer multiplies by, in fp32, as ``(d_out, d_in)``: :math:`\\hat W_0`
    for a quantised layer, the weight itself otherwise."""
    if not is_quantized_linear(module):
        return module.weight.detach().float()
    import bitsandbytes.functional as F

    weight = module.weight
    if _BNB_LINEAR[type(module).__name__] == 4:
        return F.dequantize_4bit(weight.data, weight.quant_state).float().reshape(module.out_features, -1)
    scales = getattr(weight, "SCB", None)
    if scales is None:
        scales = module.state.SCB
    return F.int8_vectorwise_dequant(weight.data, scales).float()


def describe_quantization(network: nn.Module) -> Optional[Quantization]:
    """The :class:`Quantization` of ``network``'s frozen base as loaded (read from its layers and
    its ``config.quantization_config``), or ``None`` for a base with no quantised layer.

    :raises QuantizationError: layers quantised in more than one way.
    """
    kinds = set()
    first = None
    for module in network.modules():
        if is_quantized_linear(module):
            bits = _BNB_LINEAR[type(module).__name__]
            if bits == 4:
                kind = (4, module.weight.quant_type, bool(module.weight.compress_statistics))
                compute = module.compute_dtype or torch.float32
            else:
                kind, compute = (8, "int8", False), torch.float32
            kinds.add(kind)
            first = first or (kind, compute, module)
    if first is None:
        return None
    if len(kinds) > 1:
        raise QuantizationError(f"the base mixes quantisations {sorted(kinds)}; one kind per base is supported")
    (bits, quant_type, double_quant), compute, module = first
    recorded = getattr(getattr(network, "config", None), "quantization_config", None)
    skip = getattr(recorded, "llm_int8_skip_modules", None) if recorded is not None else None
    if isinstance(recorded, dict):
        skip = recorded.get("llm_int8_skip_modules")
    compute_name = next((k for k, v in _COMPUTE_DTYPES.items() if v == compute), "float32")
    threshold = float(getattr(getattr(module, "state", None), "threshold", 6.0) or 6.0) if bits == 8 else 6.0
    skip = tuple(dict.fromkeys(_skip_name(pattern) for pattern in skip or ()))
    return Quantization(bits, quant_type, double_quant, compute_name, skip, threshold)


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _drop_messages(logger_name: str, prefix: str) -> None:
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, _DropMessages) and f.prefix == prefix for f in logger.filters):
        logger.addFilter(_DropMessages(prefix))


def quiet_int8_input_cast() -> None:
    """Drop bitsandbytes' warning that LLM.int8 casts its fp32 input to fp16, which it logs on
    every call of every 8-bit layer (thousands of lines per epoch). The cast is part of LLM.int8
    (its int8 product quantises fp16 rows) and is stated once in the docs instead; other
    bitsandbytes messages are kept."""
    _drop_messages("bitsandbytes.autograd._functions", "MatMul8bitLt: inputs will be cast")


def prepare_quantized_layer(module: nn.Module) -> None:
    """Make a bitsandbytes layer behave the same in training, evaluation and saving, once, when an
    adapter wraps it.

    * ``Linear4bit`` repacks its weight **in place** into a bf16 kernel's layout on its first CPU
      call in eval mode without gradients (on CPUs with AVX512-BF16); after that the weight no
      longer de-quantises as :func:`dequantized_weight` and the training path read it, and the
      repacking fails for layers narrower than 64 inputs. It is switched off (and undone if it has
      already happened), so every call multiplies by the same :math:`\\hat W_0`.
    * ``Linear8bitLt``: :func:`quiet_int8_input_cast`.
    """
    kind = _BNB_LINEAR.get(type(module).__name__) if is_quantized_linear(module) else None
    if kind == 4:
        module.support_avx512bf16_for_cpu = False
        state = module.weight.quant_state
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )
    elif kind == 8:
        quiet_int8_input_cast()


# bitsandbytes warns when it is imported (by this module, transformers or PEFT) that the optional
# `kernels` package is missing for its packed bf16 CPU kernel, which prepare_quantized_layer
# switches off anyway: that one message is dropped
_drop_messages("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward")
