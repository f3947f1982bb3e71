"""What the inference commands write: the units line of ``metrics.json`` and the rows of
``predictions.jsonl``.
"""

from __future__ import annotations

__all__ = ["UNITS", "prediction_rows"]


UNITS = (
    "accuracy, ece and error_auroc are fractions in [0, 1], not percent; nll, entropies and "
    "mutual information are in nats; brier is in [0, 2]"
)


def prediction_rows(data, output, label_names):
    """One JSON-able dict per example of ``data`` with the predictive's outputs."""
    for index in range(len(data)):
        probs = output.probs[index].tolist()
        row = {"index": index, "text": data.texts[index]}
        if data.text_pairs is not None:
            row["text_pair"] = data.text_pairs[index]
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
        yield row
