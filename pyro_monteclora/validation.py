"""Checks of single values, shared by the command line's options and the JSON records read back
from disk (``run.json``, ``training_state.json``, ``monteclora_config.json``).

A value typed on the command line and the same value read back from a file go through the same
function, so what is accepted cannot drift apart between the two. The checks raise
:class:`FieldError`, whose message starts with the field's name; callers prefix the file:
``run.json: arguments.batch_size must be an integer >= 1, got 0``.

>>> number_problem(0, minimum=1, integer=True)
'must be an integer >= 1, got 0'
>>> number_problem(float("nan"), minimum=0) is not None, number_problem(3, minimum=0)
(True, None)
>>> get_field({"epoch": "3"}, "epoch", "training_state.json: epoch", "integer", minimum=0)
Traceback (most recent call last):
...
pyro_monteclora.validation.FieldError: training_state.json: epoch must be an integer >= 0, got '3'
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any, Optional

__all__ = ["FieldError", "MAX_SEED", "number_problem", "check_value", "get_field", "parse_json", "shown"]

#: the largest seed: NumPy's generator, seeded by ``pyro.set_rng_seed``, takes 32-bit seeds
MAX_SEED = 2**32 - 1
#: value kinds :func:`check_value` knows (besides a tuple of allowed values)
KINDS = ("integer", "number", "flag", "text", "texts", "object", "list")
_MISSING = object()


class FieldError(ValueError):
    """A value that is missing, of the wrong type or out of range; the message names the field."""


def shown(value, limit: int = 60) -> str:
    """``value`` for an error message: numbers as they are, anything else as a short ``repr``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        text = str(value)
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number_problem(
    value, minimum=None, maximum=None, integer: bool = False, exclusive_minimum: bool = False
) -> Optional[str]:
    """``None`` when ``value`` is a finite number in range (an integral one, Python's or NumPy's, when
    ``integer``; a ``bool`` is never a number), else what it must be:
    ``"must be an integer >= 1, got 0"``. The one rule for numbers typed on the command line, given
    to the library (:class:`~pyro_monteclora.config.MonteCLoRAConfig`, ``fit``) and read back from
    disk.

    >>> number_problem(0, minimum=1, integer=True), number_problem(0.5, minimum=0) is None
    ('must be an integer >= 1, got 0', True)
    """
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = is_number and (isinstance(value, numbers.Integral) or (math.isfinite(value) and not integer))
    if ok and minimum is not None:
        ok = value > minimum if exclusive_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if ok:
        return None
    bounds = []
    if minimum is not None:
        bounds.append(f"{'>' if exclusive_minimum else '>='} {minimum}")
    if maximum is not None:
        bounds.append(f"<= {maximum}")
    kind = "an integer" if integer else "a finite number"
    return f"must be {' '.join([kind, ' and '.join(bounds)]).strip()}, got {shown(value)}"


def check_value(name: str, value, kind, *, nullable: bool = False, **bounds) -> None:
    """Raise :class:`FieldError` unless ``value`` is of ``kind``.

    :param kind: ``"integer"``/``"number"`` (with ``minimum``, ``maximum``, ``exclusive_minimum``
        as in :func:`number_problem`), ``"flag"`` (``True``/``False``), ``"text"`` (a string),
        ``"texts"`` (a non-empty list of strings), ``"object"`` (a dict), ``"list"``, or a tuple of
        the allowed values.
    :param nullable: ``None`` is allowed too.
    """
    if value is None and nullable:
        return
    if isinstance(kind, tuple):
        if not any(value == choice and type(value) is type(choice) for choice in kind):
            raise FieldError(f"{name} must be one of {', '.join(map(repr, kind))}, got {shown(value)}")
        return
    if kind in ("integer", "number"):
        problem = number_problem(value, integer=kind == "integer", **bounds)
        if problem:
            raise FieldError(f"{name} {problem}")
        return
    expected = {
        "flag": (bool, "true or false"),
        "text": (str, "a string"),
        "object": (dict, "an object"),
        "list": (list, "a list"),
        "texts": (list, "a non-empty list of strings"),
    }[kind]
    ok = isinstance(value, expected[0])
    if ok and kind == "texts":
        ok = bool(value) and all(isinstance(item, str) for item in value)
    if not ok:
        raise FieldError(f"{name} must be {expected[1]}{' or null' if nullable else ''}, got {shown(value)}")


def get_field(record, key: str, name: str, kind, *, default: Any = _MISSING, nullable: bool = False, **bounds):
    """``record[key]`` checked with :func:`check_value`; a missing key is an error unless a
    ``default`` is given. ``name`` is the field as the message shows it."""
    if not isinstance(record, dict):
        raise FieldError(f"{name.rpartition('.')[0] or name} must be an object, got {shown(record)}")
    if key not in record:
        if default is _MISSING:
            raise FieldError(f"{name} is missing")
        return default
    value = record[key]
    check_value(name, value, kind, nullable=nullable, **bounds)
    return value


def parse_json(text: str, **kwargs):
    """``json.loads`` (``kwargs`` passed on, an ``object_pairs_hook`` say), with the errors it raises
    besides :class:`json.JSONDecodeError` (nesting deeper than Python's recursion limit, an integer
    of more than 4300 digits) turned into one, so a caller's ``except json.JSONDecodeError`` sees
    every malformed document. An error the hook raises passes through."""
    try:
        return json.loads(text, **kwargs)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", text, 0) from None
    except json.JSONDecodeError:
        raise
    except ValueError as error:
        if "integer string conversion" not in str(error):
            raise
        raise json.JSONDecodeError(str(error).split(";")[0], text, 0) from None
