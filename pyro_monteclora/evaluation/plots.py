"""Figures of a predictive distribution's calibration and of a sweep's spread.

:func:`plot_reliability_diagram` draws, side by side, one reliability diagram per model from the
output of :func:`~pyro_monteclora.evaluation.metrics.reliability_curve`; :func:`plot_sweep_boxes` draws the
spread of a hyper-parameter sweep's cells per method, one panel per metric (the paper's box plots);
:func:`plot_pass_at_k` draws HumanEval's pass@k per run and how many completions of each problem passed.
matplotlib is optional: it is imported
only when a figure is drawn, and the figure is rendered with the Agg canvas (no display, no change
to ``pyplot``'s global backend).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Optional, Union

from pyro_monteclora.evaluation.metrics import curve_ece
from pyro_monteclora.storage.atomic import atomic_file

__all__ = ["plot_reliability_diagram", "plot_sweep_boxes", "plot_pass_at_k"]

_METHOD_COLOURS = {"monteclora": "#4C72B0", "lora": "#DD8452", "full": "#55A868"}

_CURVE_KEYS = ("edges", "count", "confidence", "accuracy")


def _check_curve(label: str, curve) -> int:
    """Validate one reliability curve; return its number of examples."""
    if not isinstance(curve, Mapping) or any(key not in curve for key in _CURVE_KEYS):
        raise ValueError(
            f"curves[{label!r}] must be the output of pyro_monteclora.evaluation.metrics.reliability_curve "
            f"(a dict with keys {list(_CURVE_KEYS)})"
        )
    bins = len(curve["count"])
    if (
        bins < 1
        or len(curve["edges"]) != bins + 1
        or len(curve["confidence"]) != bins
        or len(curve["accuracy"]) != bins
    ):
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


def plot_reliability_diagram(
    curves: Mapping[str, Mapping],
    path: Union[str, os.PathLike],
    title: Optional[str] = None,
    confidence_label: str = "confidence (max probability)",
) -> Path:
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
    FigureCanvasAgg, Figure = _matplotlib("plot_reliability_diagram")

    path = Path(path)
    columns = len(curves)
    figure = Figure(figsize=(4.2 * columns, 5.4 if title else 5.0), layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.add_gridspec(2, columns, height_ratios=(3.2, 1.0))
    # one y-scale for every histogram, so that the panels compare at a glance
    top_fraction = max(count / totals[label] for label, curve in curves.items() for count in curve["count"])
    for column, (label, curve) in enumerate(curves.items()):
        top = figure.add_subplot(grid[0, column])
        _draw_reliability_bars(top, label, curve, totals[label], legend=column == 0)
        bottom = figure.add_subplot(grid[1, column], sharex=top)
        _draw_confidence_histogram(bottom, curve, totals[label], top_fraction, confidence_label)
    if title:
        figure.suptitle(title)
    return _save_png(figure, path)


def _matplotlib(caller: str):
    """matplotlib's Agg canvas and ``Figure`` classes; an ImportError naming ``caller`` without it."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"{caller} needs matplotlib: pip install matplotlib") from error
    return FigureCanvasAgg, Figure


def _save_png(figure, path: Path) -> Path:
    """Render ``figure`` to a temporary PNG beside ``path``, then rename it to ``path``."""
    with atomic_file(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)
    return path


def _bins(curve) -> tuple:
    """A curve's bin edges, left edges and widths (as floats)."""
    edges = [float(e) for e in curve["edges"]]
    return edges, edges[:-1], [b - a for a, b in zip(edges[:-1], edges[1:])]


def _draw_reliability_bars(top, label, curve, total: int, legend: bool) -> None:
    """One reliability panel: each non-empty bin's accuracy, its gap to the bin's mean confidence,
    the diagonal of perfect calibration, and the ECE in the title."""
    edges, lefts, widths = _bins(curve)
    centres = [a + w / 2 for a, w in zip(lefts, widths)]
    full = [i for i, count in enumerate(curve["count"]) if count]
    acc = [float(curve["accuracy"][i]) for i in full]
    conf = [float(curve["confidence"][i]) for i in full]
    top.bar(
        [lefts[i] for i in full],
        acc,
        width=[widths[i] for i in full],
        align="edge",
        color="#4C72B0",
        edgecolor="#1f3b63",
        linewidth=0.6,
        label="accuracy",
    )
    # the gap between accuracy and mean confidence, drawn at the bin's mean confidence
    top.bar(
        [centres[i] for i in full],
        [c - a for a, c in zip(acc, conf)],
        bottom=acc,
        width=[widths[i] * 0.9 for i in full],
        color="#DD8452",
        alpha=0.45,
        edgecolor="#C44E52",
        hatch="//",
        linewidth=0.6,
        label="gap to confidence",
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="0.3", linewidth=1.0, label="perfect calibration")
    top.set_xlim(edges[0], edges[-1])
    top.set_ylim(0, 1)
    top.set_aspect("auto")
    top.set_ylabel("accuracy")
    top.tick_params(labelbottom=False)
    top.set_title(f"{label}\nECE = {curve_ece(curve):.4f}  (n = {total:,})", fontsize=10)
    top.grid(True, alpha=0.25)
    if legend:
        top.legend(loc="upper left", fontsize=8, frameon=False)


def _draw_confidence_histogram(bottom, curve, total: int, top_fraction: float, confidence_label: str) -> None:
    """The fraction of the examples in each bin, on the y-scale shared by every panel."""
    edges, lefts, widths = _bins(curve)
    fractions = [count / total for count in curve["count"]]
    bottom.bar(lefts, fractions, width=widths, align="edge", color="0.55", edgecolor="0.3", linewidth=0.5)
    bottom.set_xlabel(confidence_label)
    bottom.set_ylabel("fraction")
    bottom.set_ylim(0, max(0.05, top_fraction * 1.1))
    bottom.grid(True, alpha=0.25)
    if math.isclose(edges[0], 0.0) and math.isclose(edges[-1], 1.0):
        bottom.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])


def plot_sweep_boxes(
    results,
    metrics,
    path: Union[str, os.PathLike],
    title: Optional[str] = None,
    labels: Optional[Mapping[str, str]] = None,
) -> Path:
    """Save box plots of a sweep's cells: one panel per metric, one box per method, every cell
    drawn over its box as a point (shifted sideways by its batch size, marked by its learning rate).

    :param results: one mapping per cell with ``method``, ``learning_rate``, ``batch_size``,
        ``status`` and ``metrics`` (cells whose status is not ``"ok"`` are left out).
    :param metrics: the metric names to draw, in order.
    :param labels: axis names per metric (default: the metric name).
    :returns: ``path``; written to a temporary file, then renamed.
    :raises ImportError: if matplotlib is not installed.
    :raises ValueError: if no cell has any of ``metrics``.
    """
    FigureCanvasAgg, Figure = _matplotlib("plot_sweep_boxes")
    done = [row for row in results if row.get("status") == "ok"]
    metrics = [m for m in metrics if any(m in row.get("metrics", {}) for row in done)]
    if not metrics:
        raise ValueError("no finished cell has any of the metrics to plot")
    methods = list(dict.fromkeys(row["method"] for row in done))
    batch_sizes = sorted({row["batch_size"] for row in done})
    rates = sorted({row["learning_rate"] for row in done})
    figure = Figure(figsize=(3.2 + 1.3 * len(methods) * len(metrics), 4.4), layout="constrained")
    FigureCanvasAgg(figure)
    for column, metric in enumerate(metrics):
        axis = figure.add_subplot(1, len(metrics), column + 1)
        _draw_metric_boxes(axis, done, metric, methods, batch_sizes, rates)
        axis.set_ylabel((labels or {}).get(metric, metric))
        if column == 0:
            _draw_sweep_legend(axis, batch_sizes, rates)
    if title:
        figure.suptitle(title)
    return _save_png(figure, Path(path))


_MARKERS = "osD^vP*X<>"


def _draw_metric_boxes(axis, done, metric: str, methods, batch_sizes, rates) -> None:
    """One box per method over the cells' ``metric``, each cell a point over its box (shifted
    sideways by its batch size, marked by its learning rate)."""
    values = [
        [float(r["metrics"][metric]) for r in done if r["method"] == m and metric in r["metrics"]] for m in methods
    ]
    boxes = axis.boxplot(
        values, patch_artist=True, widths=0.55, showfliers=False, medianprops={"color": "black", "linewidth": 1.4}
    )
    for patch, method in zip(boxes["boxes"], methods):
        patch.set_facecolor(_METHOD_COLOURS.get(method, "0.7"))
        patch.set_alpha(0.45)
    for position, method in enumerate(methods, start=1):
        for row in (r for r in done if r["method"] == method and metric in r["metrics"]):
            shift = (
                0.0
                if len(batch_sizes) == 1
                else (-0.18 + 0.36 * batch_sizes.index(row["batch_size"]) / (len(batch_sizes) - 1))
            )
            axis.scatter(
                position + shift,
                float(row["metrics"][metric]),
                s=22,
                zorder=3,
                marker=_MARKERS[rates.index(row["learning_rate"]) % len(_MARKERS)],
                color=_METHOD_COLOURS.get(method, "0.3"),
                edgecolor="black",
                linewidth=0.4,
            )
    axis.set_xticks(range(1, len(methods) + 1), methods)
    axis.grid(True, axis="y", alpha=0.3)


def _draw_sweep_legend(axis, batch_sizes, rates) -> None:
    """The legend of the points: a marker per learning rate and, with several, the batch sizes' order."""
    for index, rate in enumerate(rates):
        axis.scatter(
            [],
            [],
            marker=_MARKERS[index % len(_MARKERS)],
            color="0.5",
            edgecolor="black",
            linewidth=0.4,
            label=f"lr {rate:g}",
        )
    if len(batch_sizes) > 1:
        axis.plot([], [], " ", label="batch " + ", ".join(map(str, batch_sizes)) + " left to right")
    axis.legend(fontsize=7, frameon=False, loc="best")


def plot_pass_at_k(runs: Mapping[str, Mapping], path: Union[str, os.PathLike], title: Optional[str] = None) -> Path:
    """pass@k of each run (left) and, per run, the share of problems by the fraction of their
    completions that passed (right), from the outputs of
    :func:`~pyro_monteclora.evaluation.humaneval.score_completions` keyed by label."""
    if not runs:
        raise ValueError("plot_pass_at_k(): no run to plot")
    FigureCanvasAgg, Figure = _matplotlib("plot_pass_at_k")
    figure = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    labels = list(runs)
    ks = list(next(iter(runs.values()))["pass_at_k"])
    width = 0.8 / len(labels)
    for index, label in enumerate(labels):
        values = [runs[label]["pass_at_k"][k] for k in ks]
        positions = [x + index * width for x in range(len(ks))]
        bars = left.bar(positions, values, width, label=label)
        left.bar_label(bars, fmt="%.3f", fontsize=7)
        fractions = [row["passed"] / runs[label]["num_samples"] for row in runs[label]["problems"]]
        right.hist(fractions, bins=[i / 10 for i in range(11)], histtype="step", linewidth=1.5, label=label)
    left.set_xticks([x + width * (len(labels) - 1) / 2 for x in range(len(ks))], ks)
    left.set_ylabel("pass@k (mean over problems)")
    left.legend(fontsize=8)
    right.set_xlabel("fraction of a problem's completions that pass")
    right.set_ylabel("problems")
    right.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    return _save_png(figure, Path(path))
