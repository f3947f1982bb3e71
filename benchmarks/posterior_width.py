"""Why MonteCLoRA's predictive stays overconfident, and which fix in the method's spirit helps (issue 17).

On the demo's regime both LoRA and MonteCLoRA are overconfident (a validation temperature above 2).
This study measures, on the MonteCLoRA runs of ``benchmarks/calibration_baselines.py`` (same data,
seeds and budget), the candidates the issue lists, each chosen on the validation split only:

* **an evaluation-time posterior scale** :math:`\\tau` (``MonteCLoRAModel.posterior_scale``): the
  perturbation :math:`s \\lVert\\pi\\rVert L Z` times :math:`\\tau \\in \\{1, 2, 4\\}` (the predictive
  is too narrow, so only widening is tried), the :math:`\\tau` of least validation NLL scored on
  test (with and without a temperature on top);
* **weight decay** (``train --weight-decay 0.1``: AdamW's decoupled decay on every trained tensor,
  the guide's included), against the rescaling symmetry :math:`(M, B) \\to (cM, B/c)` that lets
  training shrink the noise's effect on the output (BLoB's Gaussian prior on :math:`A` is the other
  counter, measured in ``calibration_baselines.py``);
* **the number of samples** :math:`S \\in \\{1, 3, 10\\}` at evaluation, against its cost.

It writes ``posterior_width.json`` and ``posterior_width.md`` (mean ± std over seeds, each result file
recording its commit)::

    python benchmarks/posterior_width.py --runs runs/calibration_baselines   # after calibration_baselines.py
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
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_baselines import FAST, REGIMES, TRAIN, _loaders, _train  # noqa: E402
from provenance import provenance, provenance_line  # noqa: E402

from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text  # noqa: E402

__all__ = ["main", "SCALES", "SAMPLES"]

SCALES = (1.0, 2.0, 4.0)
SAMPLES = (1, 3, 10)
#: AdamW's decoupled decay on every trained tensor (M, B, the head, the guide's parameters): over the
#: demo's 192 steps at lr 3e-3 it shrinks an untouched weight by about 5%
WEIGHT_DECAY = 0.1


def _metrics(output) -> dict:
    from pyro_monteclora.evaluation.metrics import classification_metrics

    values = classification_metrics(output.probs, output.labels, 15, output.predictive_entropy)
    values["mean_mutual_information"] = float(output.mutual_information.mean())
    return values


def _with_temperature(val, test) -> dict:
    from pyro_monteclora.infer.temperature import fit_temperature, temper_output

    temperature = fit_temperature(val.probs, val.labels)
    return dict(_metrics(temper_output(test, temperature)), temperature=temperature)


def _study_seed(folder: Path, regime: dict, seed: int, args) -> dict:
    import pyro
    from transformers import AutoTokenizer

    from pyro_monteclora.infer.predictive import predict
    from pyro_monteclora.storage.checkpoint import load_pretrained

    tokenizer = AutoTokenizer.from_pretrained(folder / "checkpoint")
    _, val_loader, test_loader = _loaders(tokenizer, regime, args.fast, args.validation_samples)
    model, guide = load_pretrained(folder / "checkpoint")

    def run(loader, scale, samples, offset=0):
        pyro.set_rng_seed(seed + offset)
        with model.posterior_scale(scale):
            return predict(model, guide, loader, samples)

    validation = {scale: _metrics(run(val_loader, scale, 10))["nll"] for scale in SCALES}
    best = min(validation, key=validation.get)
    val_best = run(val_loader, best, 10)
    test_best = run(test_loader, best, 10, 1)
    result = {
        "validation_nll_by_scale": validation,
        "chosen_scale": best,
        "chosen": _metrics(test_best),
        "chosen_with_temperature": _with_temperature(val_best, test_best),
        "by_samples": {},
    }
    for samples in SAMPLES:
        started = time.perf_counter()
        output = run(test_loader, 1.0, samples, 1)
        result["by_samples"][samples] = dict(_metrics(output), seconds=time.perf_counter() - started)
    return result


def _weight_decay_seed(folder: Path, regime: dict, seed: int, args) -> dict:
    import pyro
    from transformers import AutoTokenizer

    from pyro_monteclora.infer.predictive import predict
    from pyro_monteclora.storage.checkpoint import load_pretrained

    _train(
        "monteclora",
        seed,
        folder,
        regime,
        ["--sample-scaler", str(TRAIN["sample_scaler"]), "--weight-decay", str(WEIGHT_DECAY)],
    )
    tokenizer = AutoTokenizer.from_pretrained(folder / "checkpoint")
    _, val_loader, test_loader = _loaders(tokenizer, regime, args.fast, args.validation_samples)
    model, guide = load_pretrained(folder / "checkpoint")
    pyro.set_rng_seed(seed)
    val = predict(model, guide, val_loader, 10)
    pyro.set_rng_seed(seed + 1)
    test = predict(model, guide, test_loader, 10)
    return {"raw": _metrics(test), "with_temperature": _with_temperature(val, test)}


def _stat(values):
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def markdown(records: list) -> str:
    """The tables: the chosen scale, weight decay, and S against its cost."""
    lines = ["| setting | accuracy | NLL | ECE | T on top |", "|---|---:|---:|---:|---:|"]

    def row(label, items, temperature=None):
        cells = [_stat([item[key] for item in items]) for key in ("accuracy", "nll", "ece")]
        text = " | ".join(f"{c['mean']:.4f} ± {c['std']:.4f}" for c in cells)
        t = "–" if temperature is None else f"{_stat(temperature)['mean']:.2f}"
        lines.append(f"| {label} | {text} | {t} |")

    row("MonteCLoRA, trained posterior (τ = 1, S = 10)", [r["study"]["by_samples"]["10"] for r in records])
    scales = ", ".join(str(r["study"]["chosen_scale"]) for r in records)
    row(f"posterior scale τ chosen on validation (τ = {scales})", [r["study"]["chosen"] for r in records])
    row(
        "τ chosen on validation + temperature",
        [r["study"]["chosen_with_temperature"] for r in records],
        [r["study"]["chosen_with_temperature"]["temperature"] for r in records],
    )
    row(
        f"AdamW weight decay {WEIGHT_DECAY} on every trained tensor (S = 10)",
        [r["weight_decay"]["raw"] for r in records],
    )
    row(
        f"weight decay {WEIGHT_DECAY} + temperature",
        [r["weight_decay"]["with_temperature"] for r in records],
        [r["weight_decay"]["with_temperature"]["temperature"] for r in records],
    )
    lines += ["", "| S | NLL | ECE | evaluation seconds (test split) |", "|---:|---:|---:|---:|"]
    for samples in SAMPLES:
        items = [r["study"]["by_samples"][str(samples)] for r in records]
        nll, ece, sec = (_stat([i[k] for i in items]) for k in ("nll", "ece", "seconds"))
        lines.append(
            f"| {samples} | {nll['mean']:.4f} ± {nll['std']:.4f} | {ece['mean']:.4f} ± {ece['std']:.4f} | "
            f"{sec['mean']:.1f} |"
        )
    lines += [
        "",
        "validation NLL by τ (mean over seeds): "
        + ", ".join(
            f"τ = {s}: {statistics.fmean(r['study']['validation_nll_by_scale'][str(s)] for r in records):.4f}"
            for s in SCALES
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/calibration_baselines")
    parser.add_argument("--regime", default="demo", choices=list(REGIMES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--validation-samples", type=int, default=512)
    parser.add_argument("--output", default="benchmarks/results/posterior_width")
    parser.add_argument("--fast", action="store_true", help="the smoke-test runs of calibration_baselines.py --fast")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs, output = Path(args.runs), Path(args.output)
    regime = FAST if args.fast else REGIMES[args.regime]
    records = []
    for seed in seeds:
        path = runs / "posterior_width" / f"{args.regime}-seed{seed}.json"
        if not path.is_file():
            folder = runs / args.regime / "monteclora" / str(seed)
            if not (folder / "checkpoint").is_dir():
                parser.error(f"{folder} has no checkpoint: run benchmarks/calibration_baselines.py first")
            record = {
                "seed": seed,
                "study": _study_seed(folder, regime, seed, args),
                "weight_decay": _weight_decay_seed(
                    runs / args.regime / "monteclora-weight-decay" / str(seed), regime, seed, args
                ),
                "provenance": provenance(REPO),
            }
            atomic_write_json(path, record)
        records.append(json.loads(path.read_text()))
    started = provenance(REPO)
    output.mkdir(parents=True, exist_ok=True)
    commits = sorted({r["provenance"].get("commit") for r in records})
    atomic_write_json(
        output / "posterior_width.json",
        {"regime": args.regime, "records": records, "commits": commits, "provenance": started},
    )
    text = markdown(records) + f"\nruns measured at commit(s) {', '.join(map(str, commits))}\n\n"
    atomic_write_text(output / "posterior_width.md", text + provenance_line(started) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
