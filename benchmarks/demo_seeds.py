"""The demo over several seeds: mean ± std of every metric, as the README reports it.

One seed on 1,281 test sentences moves accuracy by about ±1.5 points and ECE by about ±0.01, so a
claim needs several. This runs ``examples/rotten_tomatoes_demo.py`` once per seed (one after the
other: two torch processes on two cores slow each other down many times) into ``--runs`` and writes
``NAME.json`` and ``NAME.md`` into ``--output``; ``make results-demo`` runs the README's two tables::

    python benchmarks/demo_seeds.py --seeds 0,1,2 --output benchmarks/results/demo_seeds \\
        --name demo_summary --runs runs/demo_seeds                                 # ~22 min
    python benchmarks/demo_seeds.py --seeds 0,1,2 --output benchmarks/results/demo_seeds \\
        --name demo2000_summary --runs runs/demo2000 -- --train-samples 2000 --epochs 1
    python benchmarks/demo_seeds.py --aggregate runs/demo_seed0 runs/demo_seed1 runs/demo_seed2

Arguments after ``--`` go to the demo. Every run's ``metrics.json`` records the commit it was
measured at; the summary lists them (``commits``, in the order of ``runs``) and refuses to average
runs of different commits (or of an unknown one next to a known one) unless ``--allow-mixed``.
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
from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import UNKNOWN, checkout_environment, provenance, provenance_line  # noqa: E402

__all__ = ["aggregate", "markdown", "MixedCommitsError", "main"]

KEYS = ["accuracy", "nll", "ece", "brier", "error_auroc", "mean_mutual_information", "train_seconds"]


class MixedCommitsError(ValueError):
    """The runs to aggregate were measured at different commits."""


def _read_runs(folders) -> list:
    records = []
    for folder in folders:
        path = Path(folder) / "metrics.json"
        try:
            records.append(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise ValueError(f"{path} is missing: not a finished demo run") from None
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path} is not readable JSON") from None
    return records


def aggregate(folders, allow_mixed: bool = False) -> dict:
    """Mean, standard deviation and values over the demo runs in ``folders``, with the commit of
    each run; :class:`MixedCommitsError` when they differ and ``allow_mixed`` is false."""
    records = _read_runs(folders)
    origins = [r.get("provenance") or {"commit": UNKNOWN, "dirty": None} for r in records]
    commits = [o.get("commit", UNKNOWN) for o in origins]
    if len(set(commits)) > 1 and not allow_mixed:
        listed = ", ".join(f"{folder}: {commit[:12]}" for folder, commit in zip(folders, commits))
        raise MixedCommitsError(
            f"the runs were measured at different commits ({listed}); rerun them at "
            "one commit, or pass --allow-mixed to average them anyway"
        )
    summary = {
        "runs": [str(f) for f in folders],
        "seeds": [r["settings"]["seed"] for r in records],
        "commits": commits,
        "dirty": [o.get("dirty") for o in origins],
        "mixed_commits": len(set(commits)) > 1,
        "settings": {k: v for k, v in records[0]["settings"].items() if k != "seed"},
        "total_seconds": [r.get("environment", {}).get("total_seconds") for r in records],
        "runs_provenance": origins,
        "models": {},
    }
    for model in records[0]["models"]:
        summary["models"][model] = {}
        for key in KEYS:
            values = [r["models"][model][key] for r in records if r["models"][model].get(key) is not None]
            if values:
                summary["models"][model][key] = {
                    "mean": statistics.mean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "values": values,
                }
    return summary


def markdown(summary: dict) -> str:
    lines = ["| | " + " | ".join(KEYS) + " |", "|---|" + "---:|" * len(KEYS)]
    for model, metrics in summary["models"].items():
        cells = [f"{metrics[k]['mean']:.4g} ± {metrics[k]['std']:.2g}" if k in metrics else "n/a" for k in KEYS]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    commits = sorted(set(summary.get("commits", [])))
    dirty = " (some with uncommitted changes)" if any(summary.get("dirty", [])) else ""
    text = "\n".join(lines) + f"\n\nseeds {summary['seeds']}; settings {summary['settings']}\n"
    text += f"\nruns measured at commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}{dirty}\n"
    if "provenance" in summary:
        text += f"\nSummary: {provenance_line(summary['provenance'])}\n"
    return text


def _parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--output",
        default=None,
        help="folder of the summary (default: --runs, or the first --aggregate folder's parent)",
    )
    parser.add_argument(
        "--runs", default=None, help="folder of the per-seed demo runs (default: --output, or runs/demo_seeds)"
    )
    parser.add_argument("--name", default="summary", help="the summary's file name, without .json/.md")
    parser.add_argument("--aggregate", nargs="+", default=None, help="only summarise these finished demo folders")
    parser.add_argument(
        "--allow-mixed", action="store_true", help="average runs measured at different commits (the summary says so)"
    )
    args = parser.parse_args(argv)
    if not args.name or "/" in args.name or args.name.startswith("."):
        parser.error(f"--name must be a plain file name, got {args.name!r}")
    try:
        args.seeds = [int(seed) for seed in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    demo_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = _parse(argv[: argv.index("--")] if "--" in argv else argv)
    command = ["benchmarks/demo_seeds.py", *argv]
    if args.aggregate:
        folders = [Path(f) for f in args.aggregate]
        output = Path(args.output) if args.output else folders[0].parent
    else:
        runs = Path(args.runs or args.output or "runs/demo_seeds")
        output = Path(args.output) if args.output else runs
        folders = []
        for seed in args.seeds:
            folder = runs / f"seed{seed}"
            subprocess.run(
                [
                    sys.executable,
                    str(REPO / "examples" / "rotten_tomatoes_demo.py"),
                    "--seed",
                    str(seed),
                    "--output",
                    str(folder),
                    *demo_args,
                ],
                check=True,
                env=checkout_environment(),
            )
            folders.append(folder)
    try:
        summary = aggregate(folders, allow_mixed=args.allow_mixed)
    except ValueError as error:  # nothing is written: the runs stay for another --aggregate
        print(f"demo_seeds.py: {error}", file=sys.stderr)
        return 2
    summary["provenance"] = provenance(argv=command)
    table = markdown(summary)
    atomic_write_json(output / f"{args.name}.json", summary)
    atomic_write_text(output / f"{args.name}.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
