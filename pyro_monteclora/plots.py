"""Figures of a predictive distribution's calibration.

:func:`plot_reliability_diagram` draws, side by side, one reliability diagram per model from the
output of :func:`~pyro_monteclora.metrics.reliability_curve`. matplotlib is optional: it is imported
only when a figure is drawn, and the figure is rendered with the Agg canvas (no display, no change
to ``pyplot``'s global backend).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional, Union

from .atomic import atomic_file

__all__ = ["plot_reliability_diagram"]

_CURVE_KEYS = ("edges", "count", "confidence", "accuracy")


def _check_curve(label: str, curve) -> int:
    """Validate one reliability curve; return its number of examples."""
    if not isinstance(curve, Mapping) or any(key not in curve for key in _CURVE_KEYS):
        raise ValueError(
            f"curves[{label!r}] must be the output of pyro_monteclora.metrics.reliability_curve "
            f"(a dict with keys {list(_CURVE_KEYS)})"
        )
    bins = len(curve["count"])
    if bins < 1 or len(curve["edges"]) != bins + 1 or len(curve["confidence"]) != bins \
            or len(curve["accuracy"]) != bins:
        raise ValueError(
            f"curves[{label!r}] must have B counts, confidences and accuracies and B + 1 edges, got "
            f"{len(curve['count'])}, {len(curve['confidence'])}, {len(curve['accuracy'])} and "
            f"{len(curve['edges'])}"
        )
    total = 0
    for b, (count, conf, acc) in enumerate(zip(curve["count"], curve["confidence"], curve["accuracy"])):
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ValueError(f"curves[{label!r}]['count'][{b}] must be an integer >= 0, got {count!r}")
        if count and (conf is None or acc is None):
            raise ValueError(f"curves[{label!r}] bin {b} holds {count} examples but no confidence/accuracy")
        total += count
    if total == 0:
        raise ValueError(f"curves[{label!r}] holds no example")
    return total


def curve_ece(curve: Mapping) -> float:
    """ECE of a reliability curve,
    :math:`\\sum_b \\frac{n_b}{n} \\lvert \\operatorname{acc}_b - \\operatorname{conf}_b \\rvert`."""
    n = sum(curve["count"])
    return sum(count / n * abs(acc - conf)
               for count, conf, acc in zip(curve["count"], curve["confidence"], curve["accuracy"])
               if count)


def plot_reliability_diagram(curves: Mapping[str, Mapping], path: Union[str, os.PathLike],
                             title: Optional[str] = None,
                             confidence_label: str = "confidence (max probability)") -> Path:
    """Save reliability diagrams, one panel per curve, side by side, as a PNG.

    Each panel shows the accuracy of every confidence bin (bars), the gap to the bin's mean
    confidence (shaded), the diagonal of perfect calibration, the ECE in its title and, below, a
    histogram of the examples per bin.

    :param curves: ``{label: reliability_curve(probs, labels, bins)}`` (empty bins hold ``None``).
    :param path: the PNG to write; written to a temporary file in the same folder, then renamed.
    :param str title: optional title over all panels.
    :param str confidence_label: the x axis's name (for example ``"agreement rate"``).
    :returns: ``path`` as a :class:`~pathlib.Path`.
    :raises ImportError: if matplotlib is not installed.
    :raises ValueError: if ``curves`` is empty or a curve is malformed.
    """
    if not isinstance(curves, Mapping) or not curves:
        raise ValueError("curves must be a non-empty dict {label: reliability_curve(...)}")
    totals = {label: _check_curve(str(label), curve) for label, curve in curves.items()}
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "plot_reliability_diagram needs matplotlib: pip install matplotlib"
        ) from error

    path = Path(path)
    columns = len(curves)
    figure = Figure(figsize=(4.2 * columns, 5.4 if title else 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, columns, height_ratios=(3.2, 1.0))
    # one y-scale for every histogram, so that the panels compare at a glance
    top_fraction = max(count / totals[label] for label, curve in curves.items() for count in curve["count"])
    for column, (label, curve) in enumerate(curves.items()):
        edges = [float(e) for e in curve["edges"]]
        lefts, widths = edges[:-1], [b - a for a, b in zip(edges[:-1], edges[1:])]
        centres = [a + w / 2 for a, w in zip(lefts, widths)]
        full = [i for i, count in enumerate(curve["count"]) if count]
        acc = [float(curve["accuracy"][i]) for i in full]
        conf = [float(curve["confidence"][i]) for i in full]

        top = figure.add_subplot(grid[0, column])
        top.bar([lefts[i] for i in full], acc, width=[widths[i] for i in full], align="edge",
                color="#4C72B0", edgecolor="#1f3b63", linewidth=0.6, label="accuracy")
        # the gap between accuracy and mean confidence, drawn at the bin's mean confidence
        top.bar([centres[i] for i in full], [c - a for a, c in zip(acc, conf)], bottom=acc,
                width=[widths[i] * 0.9 for i in full], color="#DD8452", alpha=0.45,
                edgecolor="#C44E52", hatch="//", linewidth=0.6, label="gap to confidence")
        top.plot([0, 1], [0, 1], linestyle="--", color="0.3", linewidth=1.0, label="perfect calibration")
        top.set_xlim(edges[0], edges[-1])
        top.set_ylim(0, 1)
        top.set_aspect("auto")
        top.set_ylabel("accuracy")
        top.tick_params(labelbottom=False)
        top.set_title(f"{label}\nECE = {curve_ece(curve):.4f}  (n = {totals[label]:,})", fontsize=10)
        top.grid(True, alpha=0.25)
        if column == 0:
            top.legend(loc="upper left", fontsize=8, frameon=False)

        bottom = figure.add_subplot(grid[1, column], sharex=top)
        fractions = [count / totals[label] for count in curve["count"]]
        bottom.bar(lefts, fractions, width=widths, align="edge", color="0.55", edgecolor="0.3",
                   linewidth=0.5)
        bottom.set_xlabel(confidence_label)
        bottom.set_ylabel("fraction")
        bottom.set_ylim(0, max(0.05, top_fraction * 1.1))
        bottom.grid(True, alpha=0.25)
        if math.isclose(edges[0], 0.0) and math.isclose(edges[-1], 1.0):
            bottom.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    if title:
        figure.suptitle(title)

    with atomic_file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    return path
