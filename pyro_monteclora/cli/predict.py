"""``pyro-monteclora predict``: labels and uncertainty for new texts, as JSON lines.

Reads one text per line from ``--input FILE.txt`` or stdin, or a column of a csv/tsv/json/jsonl/
parquet file (``--text-column``, twice for sentence pairs), and writes one JSON object per text:
the predicted label, the probability of every label, the predictive entropy and the mutual
information (the epistemic part) under ``--num-samples`` posterior samples.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyro_monteclora.cli.checkpoints import (
    CLASSIFIER_BATCH_SIZE,
    add_inference_options,
    checkpoint_predictive,
    default_samples,
    load_for_inference,
    open_model,
    recorded_label_names,
)
from pyro_monteclora.cli.options import UsageError
from pyro_monteclora.cli.outputs import check_file_output_not_input, check_writable
from pyro_monteclora.cli.reports import prediction_rows

__all__ = ["add_predict_parser", "run_predict"]


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``predict`` sub-command and its options."""
    parser = subparsers.add_parser(
        "predict",
        help="predict labels and uncertainty for new texts (JSON lines)",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_inference_options(parser)
    parser.add_argument(
        "--input",
        default="-",
        help="a .txt file (one text per line), a csv/tsv/json/jsonl/parquet file, or - for stdin",
    )
    parser.add_argument(
        "--text-column",
        action="append",
        default=None,
        help="the text column of a table file (twice for sentence pairs)",
    )
    parser.add_argument("--output", default="-", help="JSONL file, or - for stdout")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.set_defaults(handler=run_predict)
    return parser


def _read_texts(args):
    from pyro_monteclora.data.classification import TextClassificationData
    from pyro_monteclora.data.errors import DataError
    from pyro_monteclora.data.files import load_file_table, split_lines
    from pyro_monteclora.data.records import table_to_classification

    if args.input == "-" or Path(args.input).suffix.lower() in ("", ".txt"):
        if args.input == "-":
            try:
                text = sys.stdin.buffer.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                raise UsageError("standard input is not UTF-8 text") from None
        else:
            path = Path(args.input)
            if not path.is_file():
                raise UsageError(f"--input {path}: no such file")
            try:
                text = path.read_bytes().decode("utf-8-sig")
            except UnicodeDecodeError:
                raise UsageError(f"--input {path} is not UTF-8 text") from None
        texts = [line.strip() for line in split_lines(text) if line.strip()]
        if not texts:
            raise UsageError(f"--input {args.input}: no text (one text per line)")
        return TextClassificationData(texts, [0] * len(texts), ["0"])
    try:
        return table_to_classification(load_file_table(args.input), args.input, args.text_column or ["text"], None)
    except DataError as error:
        raise UsageError(str(error)) from None


def run_predict(args, parser_defaults: dict) -> int:
    """Validate, predict, and write one JSON line per text; returns 0."""
    directory, record, device = load_for_inference(args)
    if args.output != "-":
        output = Path(args.output)
        check_writable(output, "--output")
        if output.is_dir():
            raise UsageError(f"--output {output} is a folder; give a file name")
        if output.exists() and not args.overwrite:
            raise UsageError(f"--output {output} already exists; pass --overwrite to replace it")
    metadata = record.get("metadata", {})
    check_file_output_not_input(
        args.output,
        "--output",
        [("--input", args.input), ("--checkpoint", directory), ("--model", args.model or metadata.get("model_path"))],
    )
    data = _read_texts(args)
    label_names = recorded_label_names(record)
    model, guide, tokenizer = open_model(directory, record, args, device)

    import pyro

    from pyro_monteclora.data.classification import classification_loader
    from pyro_monteclora.nn.precision import autocast
    from pyro_monteclora.storage.atomic import atomic_write_lines, json_line

    loader = classification_loader(
        data, tokenizer, args.batch_size or CLASSIFIER_BATCH_SIZE, metadata.get("max_length", 128)
    )
    pyro.set_rng_seed(args.seed)
    predictive = checkpoint_predictive(directory, record, model, guide, args)
    with autocast(device, args.torch_dtype):
        result = predictive(loader, default_samples(record, args.num_samples), progress=args.output != "-")
    result.labels = None  # the placeholder labels of unlabelled text

    def lines():
        for row in prediction_rows(data, result, label_names):
            row["label"] = row.pop("predicted")
            yield json_line(row)

    if args.output == "-":
        for line in lines():
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    else:
        atomic_write_lines(args.output, lines())
        print(f"wrote {len(data)} predictions to {args.output}", file=sys.stderr)
    return 0
