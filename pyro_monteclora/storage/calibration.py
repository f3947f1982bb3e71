"""A fitted temperature beside a checkpoint: ``calibration.json``.

Temperature scaling (:mod:`~pyro_monteclora.infer.temperature`) fits one scalar :math:`T > 0` on
the validation split; the folder that holds the model keeps it, with how it was fitted, so that
``evaluate`` and ``predict`` apply it to every prediction of that checkpoint:

.. code-block:: json

    {"format": "pyro-monteclora-calibration", "format_version": 1, "method": "temperature",
     "temperature": 2.4, "fitted_on": "validation", "num_samples": 10, "examples": 1066,
     "nll_before": 0.61, "nll_after": 0.52}

>>> import tempfile
>>> with tempfile.TemporaryDirectory() as folder:
...     _ = save_calibration(folder, 2.5, {"fitted_on": "validation"})
...     read_calibration(folder)["temperature"]
2.5
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

from pyro_monteclora.storage.atomic import atomic_write_json
from pyro_monteclora.storage.checkpoint import CheckpointError
from pyro_monteclora.validation import FieldError, get_field, parse_json

__all__ = ["save_calibration", "read_calibration", "CALIBRATION_NAME"]

CALIBRATION_NAME = "calibration.json"
CALIBRATION_FORMAT = "pyro-monteclora-calibration"
CALIBRATION_VERSION = 1


def save_calibration(directory: Union[str, os.PathLike], temperature: float, details: Optional[dict] = None) -> Path:
    """Write ``calibration.json`` (atomically) into ``directory`` with ``temperature`` and ``details``."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    record = {
        "format": CALIBRATION_FORMAT,
        "format_version": CALIBRATION_VERSION,
        "method": "temperature",
        "temperature": float(temperature),
        **(details or {}),
    }
    path = Path(directory) / CALIBRATION_NAME
    atomic_write_json(path, record)
    return path


def read_calibration(directory: Union[str, os.PathLike]) -> Optional[dict]:
    """The record in ``directory``'s ``calibration.json``, or ``None`` if there is none.

    :raises CheckpointError: a file that is not such a record (naming the file and the field).
    """
    path = Path(directory) / CALIBRATION_NAME
    if not path.is_file():
        return None
    try:
        record = parse_json(path.read_text(encoding="utf-8"))
        if get_field(record, "format", "format", "text") != CALIBRATION_FORMAT:
            raise FieldError(f"format must be {CALIBRATION_FORMAT!r}")
        version = get_field(record, "format_version", "format_version", "integer")
        if version != CALIBRATION_VERSION:
            raise FieldError(f"format_version must be {CALIBRATION_VERSION}, got {version}")
        get_field(record, "method", "method", ("temperature",))
        get_field(record, "temperature", "temperature", "number", minimum=0, exclusive_minimum=True)
    except FieldError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({error})") from None
    return record
