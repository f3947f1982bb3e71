"""The README's quick start, timed, with real output of ``predict`` and ``generate``.

Runs, one after the other in this checkout, each as a whole command:

1. ``make setup`` into a new virtual environment (``--venv``, removed first): what the first of the
   two commands does on a fresh machine before its work (pip's cache is whatever this machine has);
2. ``make demo`` and ``make test`` with that environment (the two commands of the README);
3. ``pyro-monteclora predict`` on three sentences with the demo's MonteCLoRA checkpoint (S = 10);
4. ``examples/trivia_generation.py`` with its default training budget on 6 held-out questions,
   for ``generate``'s JSON lines with S = 5 (``--skip-generate`` leaves it out).

and writes ``quickstart.json`` (seconds per command, the output lines, provenance) and
``quickstart.rst`` (what the docs include) into ``--output``::

    python benchmarks/quickstart.py            # about 11 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]
from provenance import provenance, provenance_line  # noqa: E402

from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text  # noqa: E402

__all__ = ["main"]

SENTENCES = [
    "a tender, funny and quietly devastating film.",
    "the plot is a mess and the jokes land with a thud.",
    "it is long, but it is never dull.",
]
PREDICT_SAMPLES = 10
GENERATE_QUESTIONS = 6


def _timed(command, *, stdin: str | None = None, env=None) -> tuple[float, str]:
    print("$", " ".join(map(str, command)), flush=True)
    started = time.perf_counter()
    done = subprocess.run(
        [str(part) for part in command],
        cwd=REPO,
        input=stdin,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
        raise SystemExit(f"{command[0]} ... exited with {done.returncode}")
    print(f"  {seconds:.0f} s", flush=True)
    return seconds, done.stdout


def _rst(record: dict) -> str:
    times = record["seconds"]
    lines = [
        ".. list-table:: The quick start on the reference machine (2 CPU cores)",
        "   :header-rows: 1",
        "",
        "   * - command",
        "     - wall time",
    ]
    for name, label in (
        ("setup", "``make setup`` (first run of either command; pip's cache warm)"),
        ("demo", "``make demo`` (after setup)"),
        ("test", "``make test`` (after setup)"),
    ):
        lines += [f"   * - {label}", f"     - {times[name] / 60:.1f} min"]
    lines += ["", provenance_line(record["provenance"]).replace("`", "``"), ""]
    lines += ["``predict`` (demo checkpoint, MonteCLoRA, S = 10):", "", ".. code-block:: text", ""]
    lines += [f"   {line}" for line in record["predict"]]
    if record.get("generate"):
        lines += [
            "",
            "``generate`` (SmolLM2 after ``examples/trivia_generation.py``'s training, S = 5):",
            "",
            ".. code-block:: text",
            "",
        ]
        lines += [f"   {line}" for line in record["generate"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default="/tmp/pyro-monteclora-quickstart-venv")
    parser.add_argument("--runs", default="runs/quickstart")
    parser.add_argument("--output", default="benchmarks/results/quickstart")
    parser.add_argument("--skip-generate", action="store_true")
    args = parser.parse_args(argv)
    venv, runs = Path(args.venv), REPO / args.runs
    shutil.rmtree(venv, ignore_errors=True)
    shutil.rmtree(runs, ignore_errors=True)
    shutil.rmtree(REPO / "runs" / "demo", ignore_errors=True)
    make = ["make", f"VENV={venv}"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    seconds, measured = {}, provenance(REPO)  # the commit the run starts at
    seconds["setup"], _ = _timed([*make, "setup"], env=env)
    seconds["demo"], _ = _timed([*make, "demo"], env=env)
    seconds["test"], _ = _timed([*make, "test"], env=env)
    cli = venv / "bin" / "pyro-monteclora"
    checkpoint = REPO / "runs" / "demo" / "monteclora"
    _, predicted = _timed(
        [cli, "predict", "--checkpoint", checkpoint, "--num-samples", PREDICT_SAMPLES],
        stdin="\n".join(SENTENCES) + "\n",
        env=env,
    )
    record = {
        "seconds": seconds,
        "predict": predicted.strip().splitlines(),
        "predict_input": SENTENCES,
        "provenance": measured,
    }
    if not args.skip_generate:
        trivia = runs / "trivia"
        seconds["trivia_example"], _ = _timed(
            [venv / "bin" / "python", "examples/trivia_generation.py", "--output", trivia]
            + ["--test-samples", GENERATE_QUESTIONS],
            env=env,
        )
        lines = (trivia / "monteclora_S5.jsonl").read_text(encoding="utf-8").splitlines()
        record["generate"] = [json.dumps(json.loads(line), ensure_ascii=False) for line in lines[:3]]
    output = REPO / args.output
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "quickstart.json", record)
    atomic_write_text(output / "quickstart.rst", _rst(record))
    print(_rst(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
