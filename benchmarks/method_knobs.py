"""The paper's own knobs, and the options this library adds, in the calibration comparison (issue 17).

Each variant is MonteCLoRA trained exactly as the ``monteclora`` method of
``benchmarks/calibration_baselines.py`` (same sentences, order, seeds, budget, s = 2e-2, S = 10
draws) with one thing changed, then scored like every baseline there: on the whole test split, raw
and with a temperature fitted on the first 512 validation sentences. The reference row is that
benchmark's own ``monteclora`` run (the true ELBO: ``kl_weight = 1``, no cooperative term, N = 4).

* **the paper's loss weights**: the published implementation (PEFT's MonteCLoRA) adds
  :math:`10^{-5}` times the KLs and the cooperative term :math:`\\sum_k \\pi_k^2`, averaged over
  the :math:`n_F` random factors, to a loss per example. In this library's per-data-set weights
  (docs, *kl_weight and cooperative_weight against a loss per example*) that is
  ``kl_weight = cooperative_weight = D 1e-5 / n_F`` with D the training sentences and
  :math:`n_F = 12` (MiniLM's 6 layers x query, value);
* **a strong cooperative term**: the true ELBO plus :math:`w' = 10^{-2}` per example and factor
  (``cooperative_weight = D 1e-2``): the term rewards even mixture weights, i.e. a small
  :math:`\\lVert\\pi\\rVert`;
* **N = 1 and N = 8 mixture components** (the paper's 4 is the reference);
* **KL weight 0.1** (a tempered posterior);
* **s = 8e-2 at training**: the width the validation NLL chose at evaluation time
  (``posterior_width.py``'s :math:`\\tau = 4`), trained with. Initialising the guide's
  :math:`\\sigma` at :math:`\\log 4` instead is the same perturbation at the start (the noise is
  :math:`s \\lVert\\pi\\rVert \\operatorname{diag}(e^{\\sigma}) T Z`); the two differ only in that the
  Wishart KL pulls :math:`\\sigma` back towards the prior's 0, and trained :math:`\\sigma` moves
  little (``method_knobs.md`` reports how far).

It writes ``method_knobs.json``, ``method_knobs.md`` and ``method_knobs.rst`` (mean ± std over seeds;
each run records its commit). Run after ``calibration_baselines.py`` on the same ``--runs`` (it reads the reference runs
there and trains its own under ``<runs>/<regime>/knobs/<variant>/<seed>``; finished seeds are kept)::

    python benchmarks/method_knobs.py --runs runs/calibration_baselines
    python benchmarks/method_knobs.py --runs runs/cb_fast --fast --seeds 0 --variants n1   # smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from calibration_baselines import FAST, REGIMES, TRAIN, _loaders, _scores, _timed, _train  # noqa: E402
from posterior_width import _stat  # noqa: E402
from provenance import provenance, provenance_line  # noqa: E402
from tables import list_table  # noqa: E402

from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text  # noqa: E402

__all__ = ["VARIANTS", "variant_options", "markdown", "main"]

#: random factors of the demo's MiniLM (6 layers x query, value): the paper averages over them
NUM_FACTORS = 12
#: the published implementation's weight on the KLs and the cooperative term, per example
PAPER_WEIGHT = 1e-5

#: name -> (label, options as a function of the number D of training sentences)
VARIANTS = {
    "paper-weights": (
        "the paper's loss weights (KL and cooperative term 1e-5 per example, averaged over factors)",
        lambda d: [
            "--kl-weight",
            f"{d * PAPER_WEIGHT / NUM_FACTORS:.6g}",
            "--cooperative-weight",
            f"{d * PAPER_WEIGHT / NUM_FACTORS:.6g}",
        ],
    ),
    "cooperative": (
        "true ELBO + cooperative term w' = 1e-2 per example and factor",
        lambda d: ["--cooperative-weight", f"{d * 1e-2:.6g}"],
    ),
    "n1": ("N = 1 mixture component", lambda d: ["--num-components", "1"]),
    "n8": ("N = 8 mixture components", lambda d: ["--num-components", "8"]),
    "kl0.1": ("KL weight 0.1", lambda d: ["--kl-weight", "0.1"]),
    "s0.08": ("sample scaler s = 8e-2 at training (4 x the demo's)", lambda d: ["--sample-scaler", "0.08"]),
}


def variant_options(name: str, regime: dict) -> list:
    """The ``train`` options of variant ``name`` (on top of the ``monteclora`` method's)."""
    return ["--sample-scaler", str(TRAIN["sample_scaler"]), *VARIANTS[name][1](regime["train_samples"])]  # last wins


def _score_run(folder: Path, regime: dict, seed: int, args) -> dict:
    import pyro
    from transformers import AutoTokenizer

    from pyro_monteclora.infer.methods import method_predictive
    from pyro_monteclora.storage.checkpoint import load_pretrained

    tokenizer = AutoTokenizer.from_pretrained(folder / "checkpoint")
    _, val_loader, test_loader = _loaders(tokenizer, regime, args.fast, args.validation_samples)
    model, guide = load_pretrained(folder / "checkpoint")
    predictive = method_predictive(model, guide, "monteclora", folder / "checkpoint")
    pyro.set_rng_seed(seed)
    val = predictive(val_loader, args.num_samples)
    pyro.set_rng_seed(seed + 1)
    test, seconds = _timed(lambda: predictive(test_loader, args.num_samples))
    scores = _scores(val, test, seconds)
    scores.pop("curves")
    scores["train_seconds"] = float(json.loads((folder / "train_summary.json").read_text())["train_seconds"])
    return scores


def guide_drift(checkpoint: Path) -> dict:
    """How far training moved the guide from its initialisation: the largest :math:`|\\sigma|`
    (initialised at 0) and the mean :math:`\\beta` (initialised uniform on (0, 1), mean 0.5)."""
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint / "model.safetensors"))
    scales = [t.abs().max().item() for k, t in tensors.items() if k.endswith(".log_scale")]
    betas = [t.mean().item() for k, t in tensors.items() if k.endswith(".log_concentration")]
    return {"max_abs_sigma": max(scales), "mean_beta": statistics.fmean(betas)}


def factor_sizes(checkpoint: Path) -> dict:
    """The root mean square of every adapter's :math:`M` and of every :math:`B` (the rescaling
    symmetry :math:`(M, B) \\to (cM, B/c)` would show as a larger :math:`M` and a smaller :math:`B`)."""
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint / "model.safetensors"))

    def rms(suffix):
        return torch.cat([t.flatten() for k, t in tensors.items() if k.endswith(suffix)]).pow(2).mean().sqrt().item()

    return {"M": rms("lora_A_mean"), "B": rms("lora_B")}


def markdown(records: dict, reference: list) -> str:
    """One row per variant (raw, then + temperature): accuracy, NLL, ECE and T, mean ± std over seeds."""
    lines = [
        "| setting | seeds | accuracy | NLL | ECE | NLL + T | ECE + T | T | max abs sigma | mean beta |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(label, items):
        raw = [_stat([i["raw"][k] for i in items]) for k in ("accuracy", "nll", "ece")]
        tempered = [_stat([i["temperature"][k] for i in items]) for k in ("nll", "ece")]
        temperature = _stat([i["temperature"]["temperature"] for i in items])
        cells = " | ".join(f"{c['mean']:.4f} ± {c['std']:.4f}" for c in raw + tempered)
        sigma = max(i["guide"]["max_abs_sigma"] for i in items)  # over seeds too
        beta = statistics.fmean(i["guide"]["mean_beta"] for i in items)
        drift = f"{sigma:.3f} | {beta:.3f}"
        lines.append(f"| {label} | {len(items)} | {cells} | {temperature['mean']:.2f} | {drift} |")

    if reference:
        row("MonteCLoRA as in calibration_baselines.py (true ELBO, N = 4)", reference)
    for name, items in records.items():
        if items:
            row(VARIANTS[name][0], items)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/calibration_baselines")
    parser.add_argument("--regime", default="demo", choices=list(REGIMES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--num-samples", type=int, default=10)
    parser.add_argument("--validation-samples", type=int, default=512)
    parser.add_argument("--output", default="benchmarks/results/method_knobs")
    parser.add_argument("--fast", action="store_true", help="the smoke-test regime of calibration_baselines.py --fast")
    parser.add_argument(
        "--aggregate-only", action="store_true", help="train nothing: tabulate the finished runs among --seeds"
    )
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    names = [v for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    runs, output = Path(args.runs), Path(args.output)
    regime = FAST if args.fast else REGIMES[args.regime]
    records = {}
    for name in names:
        records[name] = []
        for seed in seeds:
            folder = runs / args.regime / "knobs" / name / str(seed)
            path = runs / "knobs" / f"{args.regime}-{name}-seed{seed}.json"
            if not path.is_file() and args.aggregate_only:
                continue
            if not path.is_file():
                _train("monteclora", seed, folder, regime, variant_options(name, regime))
                record = dict(_score_run(folder, regime, seed, args), seed=seed, provenance=provenance(REPO))
                atomic_write_json(path, record)
                print(f"{name} seed {seed}: NLL {record['raw']['nll']:.4f}", file=sys.stderr, flush=True)
            record = json.loads(path.read_text())
            record["guide"] = guide_drift(folder / "checkpoint")
            records[name].append(record)
    reference = []
    baselines = runs / "results"
    for seed in seeds:
        path = baselines / f"{args.regime}-seed{seed}.json"
        if path.is_file():
            record = json.loads(path.read_text())["methods"]["monteclora"]
            record.pop("curves", None)
            record["guide"] = guide_drift(runs / args.regime / "monteclora" / str(seed) / "checkpoint")
            reference.append(record)
    sizes = {
        method: [factor_sizes(runs / args.regime / folder / str(seed) / "checkpoint") for seed in seeds]
        for method, folder in (("monteclora", "monteclora"), ("lora", "pool"))
        if all((runs / args.regime / folder / str(seed) / "checkpoint").is_dir() for seed in seeds)
    }
    started = provenance(REPO)
    commits = sorted({r["provenance"].get("commit") for items in records.values() for r in items})
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        output / "method_knobs.json",
        {
            "regime": args.regime,
            "seeds": {name: [r["seed"] for r in items] for name, items in records.items()},
            "variants": {n: {"label": VARIANTS[n][0], "options": variant_options(n, regime)} for n in names},
            "records": records,
            "reference": reference,
            "factor_sizes": sizes,
            "commits": commits,
            "provenance": started,
        },
    )
    text = markdown(records, reference)
    if sizes:

        def listed(items, key):
            return ", ".join(f"{item[key]:.4f}" for item in items)

        parts = [f"{m} M {listed(items, 'M')}, B {listed(items, 'B')}" for m, items in sizes.items()]
        text += "\nRMS of M and B per seed: " + "; ".join(parts) + "\n"
    text += f"\nruns measured at commit(s) {', '.join(map(str, commits))}\n\n"
    atomic_write_text(output / "method_knobs.md", text + provenance_line(started) + "\n")
    caption = f"{args.regime} regime: one change at a time (mean ± std over the seeds given)"
    atomic_write_text(output / "method_knobs.rst", list_table(caption, markdown(records, reference)))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
