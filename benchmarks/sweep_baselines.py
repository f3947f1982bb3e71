"""The robustness sweep with the calibration baselines beside MonteCLoRA and LoRA (issue 17).

The README's sweep (``benchmarks/sweep_results.py``: MiniLM on Rotten Tomatoes, 500 sentences x 5
epochs, learning rate {1e-3, 2e-3, 5e-3, 1e-2} x batch size {16, 32}, 400 test sentences, S = 8)
is run again for the baselines on the same grid and budget, with ``pyro-monteclora sweep``:

* ``mc-dropout`` with adapter dropout 0.1 (a sweep of its own: the option reaches every method);
* ``checkpoint-ensemble`` (the last 3 epochs), ``laplace`` (post hoc on the LoRA cell) and
  ``blob`` (KL weight 0.1, as in ``calibration_baselines.py``).

The MonteCLoRA, LoRA and full fine-tuning cells are read from the committed sweep
(``benchmarks/results/sweep_rotten_tomatoes/summary.json``; the commit that last wrote it is
recorded), and one table and one box plot put every method's spread of accuracy, NLL and ECE side
by side: ``summary.json``, ``summary.md`` (and ``summary.rst``, which the docs include) and
``sweep.png`` in ``--results``. The sweeps resume
where they stopped (``--resume``), so an interrupted run loses at most one cell::

    python benchmarks/sweep_baselines.py --runs runs/sweep_baselines    # 32 cells (~1 h, 2 cores)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from provenance import checkout_environment, provenance, provenance_line  # noqa: E402
from tables import list_table  # noqa: E402

from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text  # noqa: E402

__all__ = ["GRID", "GROUPS", "merge", "main"]

#: the README sweep's grid and budget (``sweep_results.MEASURED`` without its methods)
GRID = [
    "--learning-rates",
    "1e-3,2e-3,5e-3,1e-2",
    "--batch-sizes",
    "16,32",
    "--max-train-samples",
    "500",
    "--epochs",
    "5",
    "--num-samples",
    "8",
    "--max-eval-samples",
    "400",
]
#: one sweep per group: (its folder under --runs, its methods, its own options)
GROUPS = [
    ("mc-dropout", "mc-dropout", ["--lora-dropout", "0.1"]),
    ("post-hoc-and-blob", "checkpoint-ensemble,laplace,blob", ["--kl-weight", "0.1"]),
]
#: a smoke test of the script (``--fast``): one small cell per method
FAST_GRID = ["--learning-rates", "1e-3", "--batch-sizes", "16", "--max-train-samples", "32", "--epochs", "3"]
FAST_GRID += ["--num-samples", "2", "--max-eval-samples", "32"]
COMMITTED = REPO / "benchmarks" / "results" / "sweep_rotten_tomatoes" / "summary.json"
METRICS = ["accuracy", "nll", "ece"]


def _last_commit(path: Path) -> str:
    done = subprocess.run(
        ["git", "log", "-1", "--format=%H", "--", str(path)], cwd=REPO, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def merge(committed: dict, sweeps: list) -> list:
    """Every cell's result: the committed sweep's, then each new sweep's (cells of a method the
    committed sweep already has are taken from it)."""
    results = list(committed["results"])
    known = {row["method"] for row in results}
    for summary in sweeps:
        results += [row for row in summary["results"] if row["method"] not in known]
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/sweep_baselines", help="the sweeps' own --output folders go here")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "sweep_baselines"))
    parser.add_argument("--fast", action="store_true", help="one tiny cell per method: a smoke test")
    args = parser.parse_args(argv)
    origin = provenance(argv=["benchmarks/sweep_baselines.py", *(argv if argv is not None else sys.argv[1:])])
    runs, results_dir = Path(args.runs), Path(args.results)
    # the cells' provenance is that of the run that started the sweeps (a resumed or re-summarised
    # run keeps it: its cells were trained then)
    trained = runs / "provenance.json"
    if not trained.is_file():
        runs.mkdir(parents=True, exist_ok=True)
        atomic_write_json(trained, origin)
    cells_origin = json.loads(trained.read_text(encoding="utf-8"))
    started = time.perf_counter()
    sweeps = []
    for folder, methods, options in GROUPS:
        output = runs / folder
        resume = ["--resume"] if (output / "sweep.json").is_file() else []
        command = [sys.executable, "-m", "pyro_monteclora", "sweep", "--methods", methods]
        command += [*(FAST_GRID if args.fast else GRID), *options]
        status = subprocess.run([*command, "--output", str(output), *resume], env=checkout_environment()).returncode
        if status != 0:
            print(f"sweep_baselines.py: the {folder} sweep exited with {status}; rerun to resume", file=sys.stderr)
            return status
        sweeps.append(json.loads((output / "summary.json").read_text(encoding="utf-8")))
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    results = merge(committed, sweeps)
    from pyro_monteclora.evaluation.plots import plot_sweep_boxes
    from pyro_monteclora.evaluation.sweep import summarize, summary_markdown

    summary = summarize(results, METRICS)
    sources = {
        "committed": {
            "file": str(COMMITTED.relative_to(REPO)),
            "last_commit": _last_commit(COMMITTED),
            "command": committed["command"],
        },
        "sweeps": [s["command"] for s in sweeps],
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    title = f"MiniLM on rotten-tomatoes; 5 epochs; {len(results)} cells scored on 400 test sentences"
    plot_sweep_boxes(results, METRICS, results_dir / "sweep.png", title=title)
    table = summary_markdown(summary, METRICS)
    note = (
        f"MonteCLoRA, LoRA and full fine-tuning cells: `{sources['committed']['file']}` (last written at "
        f"{sources['committed']['last_commit'][:7]}); the baselines' cells: trained from commit "
        f"{str(cells_origin.get('commit'))[:7]} (sweeps started {cells_origin.get('date')}).\n"
    )
    wall = time.perf_counter() - started
    atomic_write_text(
        results_dir / "summary.md",
        f"{title}\n\n{table}\n\n{note}\nWall time {wall / 60:.1f} min. {provenance_line(origin)}\n",
    )
    atomic_write_text(results_dir / "summary.rst", list_table(title, table))
    atomic_write_json(
        results_dir / "summary.json",
        {
            "metrics": METRICS,
            "summary": summary,
            "results": results,
            "sources": sources,
            "cells_provenance": cells_origin,
            "provenance": origin,
        },
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
