"""Hyper-parameter sweeps and the spread of their results (the paper's robustness study).

MonteCLoRA's central claim is that its results vary less across learning rates and batch sizes
than LoRA's and full fine-tuning's. A sweep trains and evaluates every cell of a grid
(:func:`sweep_grid`), and :func:`summarize` reduces each method's cells to the statistics the paper
compares: for a metric :math:`m` over the method's cells :math:`c = 1..C`,

.. math::

    \\text{best} = \\max_c m_c,\\quad \\text{worst} = \\min_c m_c,\\quad
    \\text{spread} = \\max_c m_c - \\min_c m_c,\\quad
    \\text{std} = \\sqrt{\\tfrac{1}{C-1}\\textstyle\\sum_c (m_c - \\bar m)^2}

(best and worst swap for metrics where lower is better: NLL, ECE, Brier). Cells that diverged are
counted, not averaged in. The command is ``pyro-monteclora sweep`` (:mod:`pyro_monteclora.cli.sweep`).

>>> cells = sweep_grid(["lora"], [1e-4, 1e-3], [16], [0])
>>> [cell.name for cell in cells]
['lora-lr0.0001-bs16-seed0', 'lora-lr0.001-bs16-seed0']
>>> rows = [{"method": "lora", "status": "ok", "metrics": {"accuracy": a, "nll": n}}
...         for a, n in ((0.8, 0.5), (0.6, 0.9), (0.7, 0.6))]
>>> stats = summarize(rows, ["accuracy", "nll"])["lora"]
>>> stats["accuracy"]["best"], stats["accuracy"]["spread"], stats["nll"]["best"], stats["nll"]["median"]
(0.8, 0.2, 0.5, 0.6)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Sequence

__all__ = ["SweepCell", "sweep_grid", "summarize", "summary_markdown", "LOWER_IS_BETTER", "STATISTICS"]

#: metrics where a smaller value is better
LOWER_IS_BETTER = ("nll", "token_nll", "ece", "brier", "perplexity")
STATISTICS = ("best", "median", "worst", "spread", "std")


@dataclass(frozen=True)
class SweepCell:
    """One grid point: a method trained with one learning rate, batch size and seed."""

    method: str
    learning_rate: float
    batch_size: int
    seed: int

    @property
    def name(self) -> str:
        """A folder name that says what the cell is (``monteclora-lr0.001-bs16-seed0``)."""
        return f"{self.method}-lr{self.learning_rate:g}-bs{self.batch_size}-seed{self.seed}"

    def to_dict(self) -> dict:
        """The cell as a JSON-able dict (with its ``name``)."""
        return dict(asdict(self), name=self.name)


def sweep_grid(
    methods: Sequence[str],
    learning_rates: Sequence[float],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    per_method: Optional[Mapping[str, Mapping[str, Sequence]]] = None,
) -> List[SweepCell]:
    """Every (method, learning rate, batch size, seed), methods outermost.

    :param per_method: grids that replace the shared one for a method, e.g.
        ``{"full": {"learning_rates": [1e-5, 5e-5], "batch_sizes": [16]}}`` (full fine-tuning needs
        smaller rates than adapters).
    """
    per_method = per_method or {}
    cells = []
    for method in methods:
        own = per_method.get(method, {})
        for learning_rate in own.get("learning_rates") or learning_rates:
            for batch_size in own.get("batch_sizes") or batch_sizes:
                for seed in seeds:
                    cells.append(SweepCell(method, float(learning_rate), int(batch_size), int(seed)))
    return cells


def _median(values: List[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def summarize(results: Sequence[Mapping], metrics: Sequence[str]) -> Dict[str, Dict[str, dict]]:
    """Per method and metric: best, median, worst, spread, std and the cell counts.

    :param results: one mapping per cell with ``method``, ``status`` (``"ok"`` or why not) and
        ``metrics`` (name to value).
    :returns: ``{method: {metric: {"best", "median", "worst", "spread", "std", "cells"}, "cells":
        n, "failed": k}}``; a metric no cell reported is left out.
    """
    summary: Dict[str, Dict[str, dict]] = {}
    for method in dict.fromkeys(row["method"] for row in results):
        rows = [row for row in results if row["method"] == method]
        done = [row for row in rows if row.get("status") == "ok"]
        entry: Dict[str, dict] = {"cells": len(rows), "failed": len(rows) - len(done)}
        for metric in metrics:
            values = [
                float(row["metrics"][metric])
                for row in done
                if metric in row.get("metrics", {}) and math.isfinite(float(row["metrics"][metric]))
            ]
            if not values:
                continue
            lower = metric in LOWER_IS_BETTER
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            entry[metric] = {
                "best": min(values) if lower else max(values),
                "median": _median(values),
                "worst": max(values) if lower else min(values),
                "spread": round(max(values) - min(values), 12),
                "std": std,
                "mean": mean,
                "cells": len(values),
            }
        summary[method] = entry
    return summary


def summary_markdown(summary: Mapping[str, Mapping], metrics: Sequence[str], digits: int = 4) -> str:
    """The summary as a markdown table: one row per method and metric.

    >>> print(summary_markdown({"lora": {"cells": 2, "failed": 0, "nll": {"best": 0.5, "median": 0.55,
    ...     "worst": 0.6, "spread": 0.1, "std": 0.0707, "cells": 2}}}, ["nll"]))
    | method | metric | best | median | worst | spread | std | cells |
    | --- | --- | --- | --- | --- | --- | --- | --- |
    | lora | nll | 0.5000 | 0.5500 | 0.6000 | 0.1000 | 0.0707 | 2 |
    """
    lines = [
        "| method | metric | " + " | ".join(STATISTICS) + " | cells |",
        "| --- | --- | " + " | ".join("---" for _ in STATISTICS) + " | --- |",
    ]
    for method, entry in summary.items():
        for metric in metrics:
            if metric not in entry:
                continue
            stats = entry[metric]
            cells = f"{stats['cells']}" + (f" ({entry['failed']} failed)" if entry.get("failed") else "")
            lines.append(
                f"| {method} | {metric} | "
                + " | ".join(f"{stats[name]:.{digits}f}" for name in STATISTICS)
                + f" | {cells} |"
            )
    return "\n".join(lines)
