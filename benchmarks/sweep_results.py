"""The README's robustness sweep, re-run and copied into ``benchmarks/results/`` with its provenance.

``pyro-monteclora sweep`` writes every cell's checkpoint under its ``--output``; this runs it there
(``--runs``, default ``runs/sweep_rt``), then copies what the README and the docs quote —
``summary.json`` (with ``provenance``: the commit the sweep started at, and ``wall_seconds``),
``summary.md`` (with a provenance line), ``sweep.json`` and ``sweep.png`` — into ``--results``
(default ``benchmarks/results/sweep_rotten_tomatoes``). Nothing is copied when the sweep fails.

Without options after ``--`` it runs the measured grid (``MEASURED``; 37.6 minutes on 2 cores)::

    python benchmarks/sweep_results.py
    python benchmarks/sweep_results.py --runs runs/sweep_small -- --methods lora --learning-rates 1e-3 \\
        --batch-sizes 16 --max-train-samples 32 --epochs 1 --max-eval-samples 32 --overwrite

A sweep continued with ``--resume`` may hold cells trained at an earlier commit: its provenance is
that of the session that finished it.
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
from pyro_monteclora.storage.atomic import atomic_file, atomic_write_json, atomic_write_text  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import checkout_environment, provenance, provenance_line  # noqa: E402

__all__ = ["MEASURED", "collect", "main"]

#: the grid behind the README's sweep table (``benchmarks/results/sweep_rotten_tomatoes/sweep.json``)
MEASURED = [
    "--methods",
    "monteclora,lora,full",
    "--learning-rates",
    "1e-3,2e-3,5e-3,1e-2",
    "--batch-sizes",
    "16,32",
    "--full-learning-rates",
    "5e-5,5e-4",
    "--full-batch-sizes",
    "16",
    "--max-train-samples",
    "500",
    "--epochs",
    "5",
    "--sample-scaler",
    "2e-2",
    "--num-samples",
    "8",
    "--max-eval-samples",
    "400",
    "--overwrite",
]
COPIED = ("sweep.json", "sweep.png")


def collect(runs: Path, results: Path, origin: dict, wall_seconds: float) -> None:
    """Copy the finished sweep in ``runs`` into ``results``, its summary stamped with ``origin``."""
    summary = json.loads((runs / "summary.json").read_text(encoding="utf-8"))
    summary.update(provenance=origin, wall_seconds=wall_seconds)
    results.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (runs / name).is_file():
            with atomic_file(results / name) as temporary:
                temporary.write_bytes((runs / name).read_bytes())
    atomic_write_text(
        results / "summary.md",
        (runs / "summary.md").read_text(encoding="utf-8")
        + f"\nWall time {wall_seconds / 60:.1f} min. {provenance_line(origin)}\n",
    )
    atomic_write_json(results / "summary.json", summary)  # last: it marks the copy complete


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options = argv[argv.index("--") + 1 :] if "--" in argv else list(MEASURED)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/sweep_rt", help="the sweep's own --output (checkpoints)")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "sweep_rotten_tomatoes"))
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    if any(option == "--output" or option.startswith("--output=") for option in options):
        parser.error("the sweep's --output is --runs here; leave it out of the options after --")
    origin = provenance(argv=["benchmarks/sweep_results.py", *argv])
    started = time.perf_counter()
    status = subprocess.run(
        [sys.executable, "-m", "pyro_monteclora", "sweep", *options, "--output", args.runs], env=checkout_environment()
    ).returncode
    if status != 0:
        print(f"sweep_results.py: the sweep exited with {status}; nothing copied to {args.results}", file=sys.stderr)
        return status
    collect(Path(args.runs), Path(args.results), origin, time.perf_counter() - started)
    print(f"wrote {args.results}/summary.json, summary.md, {', '.join(COPIED)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
