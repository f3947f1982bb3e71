"""MonteCLoRA against the calibration baselines a practitioner would pick instead (issue 17).

Every method trains through ``pyro-monteclora train`` on the same Rotten Tomatoes sentences, with the
same order, budget (epochs, batch size, learning rate, warm-up) and base model (MiniLM), and is
scored by the library's own predictives (:mod:`pyro_monteclora.infer.methods`) on the whole test
split. Anything fitted after training (a temperature, Laplace's prior precision by marginal
likelihood) sees the validation (or training) split only, never the test split.

Methods (each also "+ temperature": one scalar fitted on the validation split's NLL):

* ``lora``: the point estimate; ``checkpoint-ensemble``: the last K epochs of that same run;
* ``deep-ensemble``: M = 5 LoRA runs, seeds k .. k+4 of one pool of runs (``pool/<seed>``), so
  consecutive seeds share members (disclosed with the table);
* ``laplace``: Laplace-LoRA (KFAC, marginal-likelihood prior precision, GLM predictive) fitted
  post hoc on the LoRA run of seed k through laplace-torch (the fit counts as training time);
* ``mc-dropout``: LoRA trained with adapter dropout 0.1, S = 10 masks;
* ``monteclora``: the demo's setting (s = 2e-2), S = 10 posterior draws;
* ``blob``: the mean-field Gaussian prior/guide over A (KL weight 0.1), S = 10 draws.

The temperature is fitted on the first ``--validation-samples`` (512) validation sentences: the
validation pass costs as much as the test pass, and 512 examples pin one scalar down.

Two regimes: the demo's (500 sentences x 6 epochs) and 2,000 sentences x 2 epochs. Results go to
``--output``: ``calibration_baselines.json`` (every seed's metrics, per-method means and standard
deviations, the provenance), ``calibration_baselines.md`` (the tables), ``nll_ece.png`` (NLL and
ECE per method with error bars) and ``reliability_<regime>.png`` (seed 0's reliability diagrams).
Each seed's result is written as soon as it is measured (``--runs``/results), so an interrupted
benchmark resumes where it stopped::

    python benchmarks/calibration_baselines.py                  # both regimes, 3 seeds (~1.5 h, 2 cores)
    python benchmarks/calibration_baselines.py --fast           # a smoke test (a few minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import provenance, provenance_line  # noqa: E402

from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text  # noqa: E402

__all__ = ["REGIMES", "METHODS", "summarise", "markdown", "main"]

REGIMES = {
    "demo": {"train_samples": 500, "epochs": 6, "checkpoints": 3},
    "large": {"train_samples": 2000, "epochs": 2, "checkpoints": 2},
}
FAST = {"train_samples": 32, "epochs": 2, "checkpoints": 2}
#: in table order
METHODS = ["lora", "checkpoint-ensemble", "deep-ensemble", "laplace", "mc-dropout", "blob", "monteclora"]
LABELS = {
    "lora": "LoRA",
    "checkpoint-ensemble": "checkpoint ensemble (last K epochs)",
    "deep-ensemble": "deep ensemble (M = 5)",
    "laplace": "Laplace-LoRA",
    "mc-dropout": "MC dropout (p = 0.1, S = 10)",
    "blob": "BLoB-style mean field (S = 10)",
    "monteclora": "MonteCLoRA (S = 10)",
}
KEYS = ["accuracy", "nll", "ece", "brier", "error_auroc", "mean_mutual_information", "temperature"]
#: shared by every method; ``blob_kl_weight``: BLoB's KL on 500 sentences at weight 1 pulls M to 0
#: (its prior's 1/sigma_p^2 = 25 per entry outweighs the data), so it is down-weighted, as BLoB does
TRAIN = {
    "learning_rate": 3e-3,
    "batch_size": 16,
    "max_length": 64,
    "sample_scaler": 2e-2,
    "dropout": 0.1,
    "blob_kl_weight": 0.1,
}


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regimes", default="demo,large", help=f"comma-separated, from {', '.join(REGIMES)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ensemble-size", type=int, default=5)
    parser.add_argument("--num-samples", type=int, default=10)
    parser.add_argument(
        "--validation-samples",
        type=int,
        default=512,
        help="the first N validation sentences fit the temperature (the whole test split is scored)",
    )
    parser.add_argument("--runs", default="runs/calibration_baselines", help="training runs and per-seed results")
    parser.add_argument("--output", default="benchmarks/results/calibration_baselines")
    parser.add_argument("--fast", action="store_true", help="tiny data and S = 2: a smoke test")
    parser.add_argument("--aggregate-only", action="store_true", help="only summarise the per-seed results")
    args = parser.parse_args(argv)
    if args.fast:  # never mix smoke-test runs or results with real ones
        args.runs = args.runs.rstrip("/") + "_fast" if args.runs == parser.get_default("runs") else args.runs
        args.output = args.output.rstrip("/") + "_fast" if args.output == parser.get_default("output") else args.output
    args.regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    unknown = [r for r in args.regimes if r not in REGIMES]
    if unknown or not args.regimes:
        parser.error(f"--regimes: {unknown or 'none'}; choose from {', '.join(REGIMES)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not args.seeds or args.ensemble_size < 1 or args.num_samples < 1:
        parser.error("--seeds needs at least one seed; --ensemble-size and --num-samples must be >= 1")
    if args.fast:
        args.num_samples = min(args.num_samples, 2)
        args.ensemble_size = min(args.ensemble_size, 2)
    return args


def _train(method: str, seed: int, folder: Path, regime: dict, extra=()) -> float:
    """Train one run with the CLI (resumed if it stopped, skipped if done); its training seconds."""
    from pyro_monteclora.cli import main as cli

    summary = folder / "train_summary.json"
    if not summary.is_file():
        command = [
            "train",
            "--method",
            method,
            "--seed",
            str(seed),
            "--max-train-samples",
            str(regime["train_samples"]),
            "--epochs",
            str(regime["epochs"]),
            "--learning-rate",
            str(TRAIN["learning_rate"]),
            "--batch-size",
            str(TRAIN["batch_size"]),
            "--max-length",
            str(TRAIN["max_length"]),
            "--no-validation",
            "--output",
            str(folder),
            *extra,
        ]
        command += (
            ["--resume"] if (folder / "run.json").is_file() and (folder / "checkpoint").is_dir() else ["--overwrite"]
        )
        status = cli(command)
        if status:
            raise RuntimeError(f"train {method} seed {seed} exited with {status}")
    return float(json.loads(summary.read_text())["train_seconds"])


def _loaders(tokenizer, regime: dict, fast: bool, validation_samples: int = 512):
    from pyro_monteclora.data.classification import classification_loader, load_rotten_tomatoes

    splits = load_rotten_tomatoes()
    train = splits["train"].subset(regime["train_samples"])
    validation, test = splits["validation"].subset(validation_samples), splits["test"]
    if fast:
        validation, test = validation.subset(48), test.subset(48)
    make = lambda data: classification_loader(data, tokenizer, 64, TRAIN["max_length"])  # noqa: E731
    return make(train), make(validation), make(test)


def _scores(val, test, seconds: float) -> dict:
    """Test metrics raw and with a temperature fitted on the validation predictive."""
    from pyro_monteclora.evaluation.metrics import classification_metrics, reliability_curve
    from pyro_monteclora.infer.temperature import fit_temperature, temper_output

    def metrics(output):
        values = classification_metrics(output.probs, output.labels, 15, output.predictive_entropy)
        values["mean_mutual_information"] = float(output.mutual_information.mean())
        return values

    temperature = fit_temperature(val.probs, val.labels)
    tempered = temper_output(test, temperature)
    return {
        "raw": dict(metrics(test), temperature=1.0),
        "temperature": dict(metrics(tempered), temperature=temperature),
        "eval_seconds": seconds,
        "curves": {
            "raw": reliability_curve(test.probs, test.labels, 15),
            "temperature": reliability_curve(tempered.probs, tempered.labels, 15),
        },
    }


def _timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def _evaluate_seed(name: str, regime: dict, seed: int, args, runs: Path) -> dict:
    """Every method's validation and test predictives for one seed."""
    import pyro
    from transformers import AutoTokenizer

    from pyro_monteclora.infer.ensembles import ensemble_predict
    from pyro_monteclora.infer.laplace import fit_laplace
    from pyro_monteclora.infer.methods import method_predictive
    from pyro_monteclora.storage.checkpoint import load_pretrained, read_trained_tensors

    members_seeds = list(range(seed, seed + args.ensemble_size))  # seed k's ensemble: pool runs k .. k+M-1
    lora_dir = runs / name / "pool" / str(seed) / "checkpoint"
    tokenizer = AutoTokenizer.from_pretrained(lora_dir)
    train_loader, val_loader, test_loader = _loaders(tokenizer, regime, args.fast, args.validation_samples)
    results = {}

    def score(method, predictive, train_seconds):
        pyro.set_rng_seed(seed)
        val = predictive(val_loader)
        pyro.set_rng_seed(seed + 1)
        test, seconds = _timed(lambda: predictive(test_loader))
        results[method] = dict(_scores(val, test, seconds), train_seconds=train_seconds)
        print(f"  {name} seed {seed} {method}: NLL {results[method]['raw']['nll']:.4f}", file=sys.stderr, flush=True)

    seconds = {j: _train_seconds(runs / name / "pool" / str(j)) for j in members_seeds}
    model, guide = load_pretrained(lora_dir)
    score("lora", lambda loader: method_predictive(model, guide, "lora")(loader, 0), seconds[seed])
    ckpt = method_predictive(model, guide, "checkpoint-ensemble", lora_dir)
    score("checkpoint-ensemble", lambda loader: ckpt(loader, 0), seconds[seed])
    members = [read_trained_tensors(runs / name / "pool" / str(j) / "checkpoint") for j in members_seeds]
    score(
        "deep-ensemble",
        lambda loader: ensemble_predict(model, guide, members, loader, 0),
        sum(seconds.values()),
    )
    # Laplace's post-hoc fit counts as training (as in train --method laplace), not as evaluation
    laplace, fit_seconds = _timed(lambda: fit_laplace(model, train_loader))
    score("laplace", lambda loader: laplace.predict(loader), seconds[seed] + fit_seconds)
    results["laplace"]["fit_seconds"] = fit_seconds
    for method in ("mc-dropout", "blob", "monteclora"):
        folder = runs / name / method / str(seed)
        trained, sampled_guide = load_pretrained(folder / "checkpoint")
        predictive = method_predictive(trained, sampled_guide, method, folder / "checkpoint")
        score(method, lambda loader: predictive(loader, args.num_samples), _train_seconds(folder))
    return results


def _train_seconds(folder: Path) -> float:
    return float(json.loads((folder / "train_summary.json").read_text())["train_seconds"])


def run_regime(name: str, args, runs: Path) -> None:
    """Train what is missing, then evaluate every seed not yet evaluated."""
    regime = FAST if args.fast else REGIMES[name]
    pool = sorted({seed + j for seed in args.seeds for j in range(args.ensemble_size)})
    for seed in pool:  # pool/<seed>: the LoRA runs (with their last K epochs) every ensemble draws on
        _train(
            "checkpoint-ensemble",
            seed,
            runs / name / "pool" / str(seed),
            regime,
            ["--ensemble-size", str(regime["checkpoints"])],
        )
    for seed in args.seeds:
        _train(
            "mc-dropout",
            seed,
            runs / name / "mc-dropout" / str(seed),
            regime,
            ["--lora-dropout", str(TRAIN["dropout"])],
        )
        _train("blob", seed, runs / name / "blob" / str(seed), regime, ["--kl-weight", str(TRAIN["blob_kl_weight"])])
        _train(
            "monteclora",
            seed,
            runs / name / "monteclora" / str(seed),
            regime,
            ["--sample-scaler", str(TRAIN["sample_scaler"])],
        )
    settings = _settings(name, args)
    for seed in args.seeds:
        path = runs / "results" / f"{name}-seed{seed}.json"
        if path.is_file():
            recorded = json.loads(path.read_text()).get("settings")
            if recorded != settings:
                raise SystemExit(f"{path} was measured with {recorded}, not {settings}: use another --runs folder")
            continue
        results = _evaluate_seed(name, regime, seed, args, runs)
        record = {
            "regime": name,
            "seed": seed,
            "settings": settings,
            "methods": results,
            "provenance": provenance(REPO),
        }
        atomic_write_json(path, record)


def _settings(name: str, args) -> dict:
    """What a per-seed result depends on besides the seed: a stored result with other settings is refused."""
    regime = FAST if args.fast else REGIMES[name]
    return dict(
        regime,
        fast=args.fast,
        num_samples=args.num_samples,
        ensemble_size=args.ensemble_size,
        validation_samples=args.validation_samples,
        **{k: v for k, v in TRAIN.items()},
    )


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def summarise(records: list) -> dict:
    """Per regime, method and calibration: the mean and standard deviation over seeds of every
    metric, and the training and evaluation times as ratios to LoRA's of the same seed."""
    summary = {}
    for record in records:
        regime = summary.setdefault(record["regime"], {})
        lora = record["methods"]["lora"]
        for method, result in record["methods"].items():
            for calibration in ("raw", "temperature"):
                row = regime.setdefault(f"{method}|{calibration}", {key: [] for key in KEYS + ["train_x", "eval_x"]})
                for key in KEYS:
                    row[key].append(result[calibration].get(key))
                row["train_x"].append(result["train_seconds"] / lora["train_seconds"])
                row["eval_x"].append(result["eval_seconds"] / lora["eval_seconds"])
    return {
        regime: {row: {key: _mean_std(values) for key, values in columns.items()} for row, columns in rows.items()}
        for regime, rows in summary.items()
    }


def _cell(stat, digits=4):
    if stat is None:
        return "–"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(summary: dict, seeds: dict) -> str:
    """One table per regime: every method, raw and + temperature."""
    lines = []
    for regime, rows in summary.items():
        spec = REGIMES.get(regime, {})
        lines += [
            f"### {regime}: {spec.get('train_samples')} sentences x {spec.get('epochs')} epochs, "
            f"seeds {seeds.get(regime)}",
            "",
            "| method | accuracy ↑ | NLL ↓ | ECE ↓ | Brier ↓ | error AUROC ↑ | T "
            "| train time (× LoRA) | eval time (× LoRA) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for method in METHODS:
            for calibration in ("raw", "temperature"):
                row = rows.get(f"{method}|{calibration}")
                if row is None:
                    continue
                label = LABELS[method] + (" + temperature" if calibration == "temperature" else "")
                lines.append(
                    f"| {label} | {_cell(row['accuracy'])} | {_cell(row['nll'])} | {_cell(row['ece'])} | "
                    f"{_cell(row['brier'])} | {_cell(row['error_auroc'])} | {_cell(row['temperature'], 2)} | "
                    f"{_cell(row['train_x'], 2)} | {_cell(row['eval_x'], 1)} |"
                )
        lines.append("")
    return "\n".join(lines)


def rst(summary: dict, seeds: dict) -> str:
    """The tables of :func:`markdown` as reStructuredText list-tables (what the docs include)."""
    lines = []
    headers = ["method", "accuracy", "NLL", "ECE", "Brier", "error AUROC", "T", "train × LoRA", "eval × LoRA"]
    for regime, rows in summary.items():
        spec = REGIMES.get(regime, {})
        lines += [
            f".. list-table:: {regime}: {spec.get('train_samples')} sentences × {spec.get('epochs')} epochs, "
            f"seeds {seeds.get(regime)} (mean ± std)",
            "   :header-rows: 1",
            "",
            "   * - " + "\n     - ".join(headers),
        ]
        for method in METHODS:
            for calibration in ("raw", "temperature"):
                row = rows.get(f"{method}|{calibration}")
                if row is None:
                    continue
                label = LABELS[method] + (" + temperature" if calibration == "temperature" else "")
                cells = [label] + [_cell(row[k]) for k in ("accuracy", "nll", "ece", "brier", "error_auroc")]
                cells += [_cell(row["temperature"], 2), _cell(row["train_x"], 2), _cell(row["eval_x"], 1)]
                lines.append("   * - " + "\n     - ".join(cells))
        lines.append("")
    return "\n".join(lines) + "\n"


def plot(summary: dict, records: list, output: Path) -> None:
    """``nll_ece.png`` (error bars over seeds) and seed 0's reliability diagrams per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pyro_monteclora.evaluation.plots import plot_reliability_diagram

    regimes = list(summary)
    figure, axes = plt.subplots(len(regimes), 2, figsize=(12, 3.6 * len(regimes)), squeeze=False)
    for r, regime in enumerate(regimes):
        for c, metric in enumerate(("nll", "ece")):
            axis = axes[r][c]
            for offset, calibration in ((-0.15, "raw"), (0.15, "temperature")):
                xs, means, stds = [], [], []
                for i, method in enumerate(METHODS):
                    stat = summary[regime].get(f"{method}|{calibration}", {}).get(metric)
                    if stat:
                        xs.append(i + offset)
                        means.append(stat["mean"])
                        stds.append(stat["std"])
                axis.errorbar(xs, means, yerr=stds, fmt="o", capsize=3, label=calibration)
            axis.set_xticks(range(len(METHODS)))
            axis.set_xticklabels(METHODS, rotation=30, ha="right", fontsize=8)
            axis.set_title(f"{regime}: test {metric.upper()} (mean ± std over seeds)")
            axis.grid(alpha=0.3)
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output / "nll_ece.png", dpi=120)
    plt.close(figure)
    for regime in regimes:
        first = min((r for r in records if r["regime"] == regime), key=lambda r: r["seed"])
        curves = {LABELS[m]: first["methods"][m]["curves"]["raw"] for m in METHODS if m in first["methods"]}
        curves["LoRA + temperature"] = first["methods"]["lora"]["curves"]["temperature"]
        curves["MonteCLoRA + temperature"] = first["methods"]["monteclora"]["curves"]["temperature"]
        plot_reliability_diagram(curves, output / f"reliability_{regime}.png", title=f"{regime}, seed {first['seed']}")


def main(argv=None) -> int:
    args = _parse(argv)
    runs, output = Path(args.runs), Path(args.output)
    started = provenance(REPO)
    if not args.aggregate_only:
        for regime in args.regimes:
            run_regime(regime, args, runs)
    records = [json.loads(p.read_text()) for p in sorted((runs / "results").glob("*-seed*.json"))]
    records = [r for r in records if r["regime"] in args.regimes and r["seed"] in args.seeds]
    if not records:
        print("no results to summarise", file=sys.stderr)
        return 1
    commits = sorted({r["provenance"].get("commit") for r in records})
    summary = summarise(records)
    seeds = {regime: sorted(r["seed"] for r in records if r["regime"] == regime) for regime in summary}
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        output / "calibration_baselines.json",
        {
            "summary": summary,
            "seeds": seeds,
            "settings": {
                "regimes": {k: REGIMES[k] for k in summary if k in REGIMES},
                "train": TRAIN,
                "ensemble_size": args.ensemble_size,
                "num_samples": args.num_samples,
                "fast": args.fast,
            },
            "runs": [{k: v for k, v in r.items() if k != "methods"} for r in records],
            "per_seed": [
                {
                    "regime": r["regime"],
                    "seed": r["seed"],
                    "methods": {m: {c: r["methods"][m][c] for c in ("raw", "temperature")} for m in r["methods"]},
                }
                for r in records
            ],
            "commits": commits,
            "provenance": started,
        },
    )
    text = markdown(summary, seeds) + f"\nruns measured at commit(s) {', '.join(map(str, commits))}\n\n"
    atomic_write_text(output / "calibration_baselines.md", text + provenance_line(started) + "\n")
    atomic_write_text(output / "calibration_baselines.rst", rst(summary, seeds))
    plot(summary, records, output)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
