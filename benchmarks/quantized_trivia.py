"""The trivia example (SmolLM2-135M-Instruct, MonteCLoRA, short answers) trained on a 4-bit base
against the fp32 base: exact match, ECE, Brier and AUROC of the agreement rate, and training time,
side by side with the same data, budget and seeds.

For every seed it runs ``examples/trivia_generation.py --seed K`` twice in fresh processes, once as
it is and once with ``--quantize 4bit`` (``train --quantize 4bit``: NF4 with double quantisation;
``generate --checkpoint`` rebuilds the 4-bit base), and keeps the MonteCLoRA rows (the mean adapter,
S = 0, and the posterior predictive, S = 5). Writes ``quantized_trivia.json`` (every run's metrics,
training seconds and the commit) and ``quantized_trivia.rst`` (mean ± std over the seeds; the docs
include it; training time is measured side by side in ``quantized_base.py`` instead, since these
runs share the machine with whatever else runs)::

    python benchmarks/quantized_trivia.py --seeds 0 1    # about 25 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

__all__ = ["main"]

BASES = {"fp32": [], "4bit": ["--quantize", "4bit"]}
MODELS = ("MonteCLoRA (S=0)", "MonteCLoRA (S=5)")
METRICS = (("exact match ↑", "exact_match"), ("ECE ↓", "ece"), ("Brier ↓", "brier"), ("AUROC ↑", "auroc"))


def _spread(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _table(record: dict) -> str:
    from provenance import provenance_line

    seeds = record["seeds"]
    runs = record["runs"]
    lines = [
        f".. list-table:: Trivia (150 held-out questions), SmolLM2-135M-Instruct, MonteCLoRA; mean ± std over "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})",
        "   :header-rows: 1",
        "",
        "   * - base",
        "     - predictive",
        *[f"     - {label}" for label, _ in METRICS],
    ]
    for base in BASES:
        for model in MODELS:
            metrics = [runs[f"{base}-seed{seed}"]["models"][model] for seed in seeds]
            lines += [
                f"   * - {base}",
                f"     - {model.replace('MonteCLoRA ', '')}",
                *[f"     - {_spread([m[key] for m in metrics])}" for _, key in METRICS],
            ]
    lines += ["", provenance_line(record["provenance"]).replace("`", "``"), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--runs", default=str(REPO / "runs" / "quantized_trivia"), help="the example's run folders")
    parser.add_argument("--output", default=str(HERE / "results" / "quantized_trivia"))
    parser.add_argument("--table-only", action="store_true", help="rewrite the .rst table from the JSON")
    args = parser.parse_args(argv)
    if args.table_only:
        from pyro_monteclora.storage.atomic import atomic_write_text

        record = json.loads((Path(args.output) / "quantized_trivia.json").read_text())
        atomic_write_text(Path(args.output) / "quantized_trivia.rst", _table(record))
        return 0
    from provenance import provenance

    from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text

    measured = provenance(REPO)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=str(REPO))
    runs = {}
    for seed in args.seeds:
        for base, extra in BASES.items():
            name = f"{base}-seed{seed}"
            folder = Path(args.runs) / name
            command = [sys.executable, str(REPO / "examples" / "trivia_generation.py"), "--seed", str(seed)]
            subprocess.run([*command, "--output", str(folder), *extra], env=env, cwd=str(REPO), check=True)
            result = json.loads((folder / "metrics.json").read_text())
            runs[name] = {
                "models": {model: result["models"][model] for model in MODELS},
                "train_seconds": result["environment"]["train_seconds"],
                "settings": result["settings"],
            }
            print(name, json.dumps(runs[name]["models"]), flush=True)
    record = {"seeds": args.seeds, "runs": runs, "provenance": measured}
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "quantized_trivia.json", record)
    atomic_write_text(output / "quantized_trivia.rst", _table(record))
    print(_table(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
