"""The demo over several seeds: mean ± std of every metric, as the README reports it.

One seed on 1,281 test sentences moves accuracy by about ±1.5 points and ECE by about ±0.01, so a
claim needs several. This runs ``examples/rotten_tomatoes_demo.py`` once per seed (one after the
other: two torch processes on two cores slow each other down many times) and writes
``summary.json`` and ``summary.md`` next to the runs::

    python benchmarks/demo_seeds.py --seeds 0,1,2 --output runs/demo_seeds            # ~22 min
    python benchmarks/demo_seeds.py --seeds 0,1,2 --output runs/demo2000 -- --train-samples 2000 --epochs 1
    python benchmarks/demo_seeds.py --aggregate runs/demo_seed0 runs/demo_seed1 runs/demo_seed2

Arguments after ``--`` go to the demo.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from pyro_monteclora.atomic import atomic_write_json, atomic_write_text  # noqa: E402

KEYS = ["accuracy", "nll", "ece", "brier", "error_auroc", "mean_mutual_information", "train_seconds"]


def aggregate(folders) -> dict:
    records = [json.loads((Path(f) / "metrics.json").read_text()) for f in folders]
    summary = {"runs": [str(f) for f in folders],
               "seeds": [r["settings"]["seed"] for r in records],
               "settings": {k: v for k, v in records[0]["settings"].items() if k != "seed"},
               "models": {}}
    for model in records[0]["models"]:
        summary["models"][model] = {}
        for key in KEYS:
            values = [r["models"][model][key] for r in records if r["models"][model].get(key) is not None]
            if values:
                summary["models"][model][key] = {
                    "mean": statistics.mean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0, "values": values}
    return summary


def markdown(summary: dict) -> str:
    lines = ["| | " + " | ".join(KEYS) + " |", "|---|" + "---:|" * len(KEYS)]
    for model, metrics in summary["models"].items():
        cells = [f"{metrics[k]['mean']:.4g} ± {metrics[k]['std']:.2g}" if k in metrics else "n/a"
                 for k in KEYS]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nseeds {summary['seeds']}; settings {summary['settings']}\n"


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    demo_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--output", default="runs/demo_seeds")
    parser.add_argument("--aggregate", nargs="+", default=None,
                        help="only summarise these finished demo folders")
    args = parser.parse_args(argv)
    if args.aggregate:
        folders, output = [Path(f) for f in args.aggregate], Path(args.aggregate[0]).parent
    else:
        output = Path(args.output)
        folders = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            folder = output / f"seed{seed}"
            subprocess.run([sys.executable, str(REPO / "examples" / "rotten_tomatoes_demo.py"),
                            "--seed", str(seed), "--output", str(folder), *demo_args], check=True)
            folders.append(folder)
    summary = aggregate(folders)
    table = markdown(summary)
    atomic_write_json(output / "summary.json", summary)
    atomic_write_text(output / "summary.md", table)
    print(table)


if __name__ == "__main__":
    main()
