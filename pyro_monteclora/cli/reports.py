"""What the inference commands write: the units line of ``metrics.json``, the rows of
``predictions.jsonl``, and the three result files written together (:func:`write_results`).
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["UNITS", "prediction_rows", "predictive_metrics", "write_results"]


UNITS = (
    "accuracy, ece and error_auroc are fractions in [0, 1], not percent; nll, entropies and "
    "mutual information are in nats; brier is in [0, 2]"
)


def prediction_rows(data, output, label_names):
    """One JSON-able dict per example of ``data`` with the predictive's outputs, the texts read
    from its table a batch at a time (a million rows are never one list)."""
    pairs = "text_pair" in data.table.column_names
    columns = ["text", "text_pair"] if pairs else ["text"]
    index = -1
    for batch in data.table.select_columns(columns).iter(batch_size=4096):
        for position, text in enumerate(batch["text"]):
            index += 1
            yield _prediction_row(index, text, batch["text_pair"][position] if pairs else None, output, label_names)


def _prediction_row(index: int, text: str, text_pair, output, label_names) -> dict:
    probs = output.probs[index].tolist()
    row = {"index": index, "text": text}
    if text_pair is not None:
        row["text_pair"] = text_pair
    predicted = max(range(len(probs)), key=probs.__getitem__)
    row.update(
        {
            "predicted": label_names[predicted],
            "probabilities": {name: p for name, p in zip(label_names, probs)},
            "predictive_entropy": output.predictive_entropy[index].item(),
            "expected_entropy": output.expected_entropy[index].item(),
            "mutual_information": output.mutual_information[index].item(),
        }
    )
    if output.labels is not None:
        row["label"] = label_names[int(output.labels[index])]
        row["correct"] = predicted == int(output.labels[index])
    return row


def predictive_metrics(result, ece_bins: int):
    """The metrics of a :class:`~pyro_monteclora.infer.predictive.PredictiveOutput` against its
    labels (accuracy, NLL, ECE, Brier, error AUROC of the predictive entropy, mean entropy and
    mutual information) and its reliability curve.

    :returns: ``(metrics, curve)``.
    """
    from pyro_monteclora.evaluation.metrics import classification_metrics, reliability_curve

    metrics = classification_metrics(result.probs, result.labels, ece_bins, uncertainty=result.predictive_entropy)
    metrics.update(
        {
            "mean_predictive_entropy": result.predictive_entropy.mean().item(),
            "mean_mutual_information": result.mutual_information.mean().item(),
        }
    )
    return metrics, reliability_curve(result.probs, result.labels, ece_bins)


def write_results(output: Path, rows, curve: dict, label: str, title: str, record: dict) -> None:
    """Write ``predictions.jsonl`` (``rows``), ``reliability.png`` (``curve``, skipped with a line
    on stderr without matplotlib) and ``metrics.json`` (``record``, with the units line and the
    curve) into ``output``: all three appear together, or none (an atomic folder swap)."""
    from pyro_monteclora.storage.atomic import atomic_directory, atomic_write_json, atomic_write_lines, json_line

    with atomic_directory(output) as staging:
        atomic_write_lines(staging / "predictions.jsonl", (json_line(row) for row in rows))
        try:
            from pyro_monteclora.evaluation.plots import plot_reliability_diagram

            plot_reliability_diagram({label: curve}, staging / "reliability.png", title=title)
        except ImportError:
            print("reliability.png skipped: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        atomic_write_json(staging / "metrics.json", {"units": UNITS, **record, "reliability": curve})
    metrics = record["metrics"]
    print(" ".join(f"{k}={v:.4f}" for k, v in metrics.items() if isinstance(v, float)), flush=True)
    print(f"wrote {output}/metrics.json, reliability.png, predictions.jsonl", file=sys.stderr)
