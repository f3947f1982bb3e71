"""What the example scripts share: the fast mode, running a ``pyro-monteclora`` command, the
markdown table of their report and the provenance of their results. Not an example itself."""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple

from pyro_monteclora.cli import main as cli

__all__ = ["apply_presets", "run_command", "markdown_table", "provenance", "provenance_line"]

TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def apply_presets(
    parser: argparse.ArgumentParser, args: argparse.Namespace, presets: Mapping[str, Mapping[str, object]]
) -> argparse.Namespace:
    """Turn on the fast mode with ``--fast`` or ``PYRO_MONTECLORA_FAST``, then fill every option
    left at ``None`` from ``presets["fast"]`` or ``presets["default"]``."""
    env = os.environ.get("PYRO_MONTECLORA_FAST", "").strip().lower()
    if env not in TRUE_WORDS + FALSE_WORDS:
        parser.error(f"PYRO_MONTECLORA_FAST must be one of 1/true/yes/on or 0/false/no/off, got {env!r}")
    args.fast = args.fast or env in TRUE_WORDS
    for key, value in presets["fast" if args.fast else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def run_command(argv: Sequence[str]) -> None:
    """One ``pyro-monteclora`` command, echoed; a failure stops the example with its status."""
    print("$ pyro-monteclora " + " ".join(argv), flush=True)
    status = cli(list(argv))
    if status != 0:
        raise SystemExit(status)


def markdown_table(
    columns: Mapping[str, Mapping[str, Optional[float]]], rows: Sequence[Tuple[str, str, str]], corner: str = "metric"
) -> str:
    """A markdown table: one column per entry of ``columns`` (label -> metrics), one row per
    ``(label, metric key, format)``; missing values print as ``n/a``."""
    lines = ["| " + " | ".join([corner, *columns]) + " |", "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|"]
    for label, key, fmt in rows:
        values = [metrics.get(key) for metrics in columns.values()]
        lines.append("| " + " | ".join([label] + ["n/a" if v is None else fmt.format(v) for v in values]) + " |")
    return "\n".join(lines)


def _provenance_module():
    """``benchmarks/provenance.py`` of this checkout, loaded by its path (``benchmarks/`` is not a
    package), so that the examples and the benchmarks record their results alike."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "provenance.py"
    spec = importlib.util.spec_from_file_location("_pyro_monteclora_provenance", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def provenance(argv: Optional[Sequence[str]] = None) -> dict:
    """The commit (and whether it had uncommitted changes), date, versions, machine and command
    line of a result measured now; see ``benchmarks/provenance.py``."""
    return _provenance_module().provenance(argv=argv)


def provenance_line(record: dict) -> str:
    """One markdown line saying where ``record`` was measured."""
    return _provenance_module().provenance_line(record)
