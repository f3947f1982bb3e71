"""A markdown pipe table as a reStructuredText ``list-table``: the result files the docs include.

>>> print(list_table("two rows", "| a | b |\\n|---|---:|\\n| 1 | 2 |\\n| 3 | 4 |\\n"))
.. list-table:: two rows
   :header-rows: 1
<BLANKLINE>
   * - a
     - b
   * - 1
     - 2
   * - 3
     - 4
<BLANKLINE>

``python benchmarks/tables.py`` writes the tables of ``docs/results.rst`` from the result files
(:func:`docs_tables`; ``--check`` only says which are out of date). Every value is read from a
result file and rounded half up; nothing is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

__all__ = ["docs_tables", "list_table", "main"]

RESULTS = Path(__file__).resolve().parent / "results"


def list_table(caption: str, markdown: str) -> str:
    """The first pipe table of ``markdown`` (its header row, then every row after the ``---`` line)."""
    rows = [line.strip() for line in markdown.splitlines() if line.strip().startswith("|")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    cells = [row for row in cells if not all(set(cell) <= set("-: ") for cell in row)]
    lines = [f".. list-table:: {caption}", "   :header-rows: 1", ""]
    lines += ["   * - " + "\n     - ".join(row) for row in cells]
    return "\n".join(lines) + "\n"


def _pipe(rows: list[list[str]]) -> str:
    """``rows`` (the first is the header) as a markdown pipe table."""
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows[1:]]) + "\n"


def _first_table(markdown: str) -> str:
    """The first block of consecutive pipe-table lines of ``markdown``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].strip().startswith("|")), len(lines))
    return "\n".join(lines[start:end]) + "\n"


def _round(value: float, digits: int) -> str:
    """``value`` to ``digits`` decimals, half up on its shortest decimal form (0.1425 -> 0.143)."""
    return str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _mean_std(entry: dict, digits: int = 3) -> str:
    return f"{_round(entry['mean'], digits)} ± {_round(entry['std'], digits)}"


def _measured_at(record: dict, name: str) -> str:
    """One line naming the commit and date of ``record``'s provenance (only the file where it has none:
    the page that includes the table says so, with the commit that added the file)."""
    provenance = record.get("provenance")
    if not provenance or provenance.get("commit") in (None, "unknown"):
        return f"Source: ``{name}``."
    dirty = " with uncommitted changes" if provenance.get("dirty") else ""
    return f"Source: ``{name}``, measured at commit ``{provenance['commit'][:7]}``{dirty} on {provenance['date'][:10]}."


def _read(name: str, results: Path) -> dict:
    return json.loads((results / name).read_text())


def _demo(summary: dict, with_time: bool) -> str:
    metrics = ["accuracy", "nll", "ece", "brier", "error_auroc"]
    rows = [["", "accuracy", "NLL", "ECE (15 bins)", "Brier", "error AUROC", "mean MI (nats)"]]
    rows[0] += ["train s"] if with_time else []
    for key, label in (("lora", "LoRA (mean adapter)"), ("monteclora", "MonteCLoRA, S = 10")):
        model = summary["models"][key]
        mutual = model["mean_mutual_information"]["mean"]
        row = [label] + [_mean_std(model[metric]) for metric in metrics] + [_round(mutual, 3) if mutual else "0"]
        rows.append(row + ([_mean_std(model["train_seconds"], 1)] if with_time else []))
    return _pipe(rows)


STUDY_ROWS = (  # (results folder, regime, regime as shown, setting, S)
    ("calibration_study", "demo", "2,000 × 1", "LoRA lr 3e-3", 0),
    ("calibration_study", "demo", "2,000 × 1", "MonteCLoRA s=2e-2 lr 3e-3", 10),
    ("calibration_study_regimes", "mid", "1,000 × 3", "LoRA lr 3e-3", 0),
    ("calibration_study_regimes", "mid", "1,000 × 3", "MonteCLoRA s=2e-2 lr 3e-3", 10),
    ("calibration_study_regimes", "small6", "500 × 6", "LoRA lr 3e-3", 0),
    ("calibration_study_regimes", "small6", "500 × 6", "MonteCLoRA s=2e-2 lr 3e-3", 10),
    ("calibration_study", "small-data", "500 × 10", "LoRA lr 3e-3", 0),
    ("calibration_study", "small-data", "500 × 10", "MonteCLoRA s=2e-2 lr 3e-3", 10),
    ("calibration_study", "small-data", "500 × 10", "LoRA lr 1e-3", 0),
    ("calibration_study", "small-data", "500 × 10", "MonteCLoRA s=5e-3 lr 1e-3", 10),
)


def _study(results: Path) -> str:
    import statistics

    runs = {folder: _read(f"{folder}/runs.json", results)["runs"] for folder in {row[0] for row in STUDY_ROWS}}
    rows = [["regime (sentences × epochs)", "setting", "accuracy", "NLL", "ECE"]]
    for folder, regime, shown, setting, samples in STUDY_ROWS:
        cell = [r for r in runs[folder] if (r["regime"], r["setting"], r["num_samples"]) == (regime, setting, samples)]
        label = setting.replace("s=", "s = ").replace(" lr", ", lr")
        stats = [
            {"mean": statistics.mean(r[m] for r in cell), "std": statistics.stdev(r[m] for r in cell)}
            for m in ("accuracy", "nll", "ece")
        ]
        rows.append([shown, label] + [_mean_std(entry) for entry in stats])
    return _pipe(rows)


def _sweep(summary: dict) -> str:
    rows = [["method", "metric", "best", "median", "worst", "spread (max − min)", "std"]]
    names = {"monteclora": "MonteCLoRA", "lora": "LoRA", "full": "full"}
    for metric, shown in (("accuracy", "accuracy"), ("nll", "NLL")):
        for method, name in names.items():
            entry = summary["summary"][method][metric]
            rows.append([name, shown] + [_round(entry[k], 3) for k in ("best", "median", "worst", "spread", "std")])
    return _pipe(rows)


def _scaling(bench: dict, axis: str, value) -> dict:
    return next(row for row in bench["scaling"] if row["axis"] == axis and row["value"] == value)


def _speed(bench: dict, llama: dict, cuda: dict) -> str:
    cpu = [_scaling(b, "layers", "query,value")["paired_ratio"] for b in (bench, llama)]
    steps = {(tuple(s["batch"]), s["dtype"]): s["ratio"] for s in cuda["step_time"]}
    rows = [["where", "model, batch", "MonteCLoRA / LoRA"]]
    rows.append(["CPU, 2 cores (``make bench``, the scaling rows)", "MiniLM / tiny Llama, 16 × 64"])
    rows[-1].append(" / ".join(f"{_round(r, 2)}×" for r in cpu))
    for dtype, where in (("torch.float32", "fp32"), ("torch.bfloat16", "bf16 autocast")):
        ratios = [steps[((16, 64), dtype)], steps[((64, 256), dtype)]]
        rows.append([f"NVIDIA H200, {where} (``cuda_check.py``)", "MiniLM-shaped, 16 × 64 / 64 × 256"])
        rows[-1].append(" / ".join(f"{_round(r, 2)}×" for r in ratios))
    return _pipe(rows)


def _site_layouts(runs: list[dict]) -> str:
    """Every ``sampling_overhead.py`` run at the commit of the last one that records its site
    layout, in the order they ran: milliseconds of MonteCLoRA-only host work per step, by part."""
    commit = runs[-1].get("provenance", {}).get("commit")
    rows = [["model, adapted layers", "site layout", "run", "guide", "model sites", "KL", "backward", "total ms"]]
    names = {"minilm": "MiniLM", "llama": "tiny Llama"}
    for run in runs:
        if run.get("provenance", {}).get("commit") != commit:
            continue
        parts = [_round(run[key], 2) for key in ("guide", "model_sites", "kl", "backward", "total")]
        label = run["label"].rsplit("run ", 1)[1] if "run " in run["label"] else "1"
        rows.append(
            [f"{names.get(run.get('model'), run.get('model'))}, {run['layers']}", run["site_layout"], label, *parts]
        )
    return _pipe(rows)


SUITE_ROWS = (  # (case, label, memory measured)
    ("plain-lora", "plain-PyTorch LoRA (the floor)", True),
    ("peft-monteclora", "PEFT's MonteCLoRA variant (``MontecloraConfig``, 4 samples)", True),
    ("ours-lora-mode", "this library, LoRA mode (``MonteCLoRAGuide(mode='lora')``)", True),
    ("ours-monteclora", "**this library, MonteCLoRA SVI step**", True),
    ("ours-no-pyro", "the same MonteCLoRA math without Pyro", False),
)


def _suite(benches: list[dict], memories: list[dict]) -> str:
    rows = [["training step", "time, MiniLM", "time, tiny Llama", "peak memory, MiniLM", "peak memory, tiny Llama"]]
    reference = ["PEFT LoRA (the reference)"]
    reference += [f"1.00 ({_round(b['steps']['peft-lora']['median_s'], 2)} s)" for b in benches]
    reference += [f"1.000 ({_round(m['cases']['peft-lora']['peak_mib'], 0)} MiB)" for m in memories]
    rows.append(reference)
    for case, label, with_memory in SUITE_ROWS:
        row = [label]
        for bench in benches:
            step = bench["steps"][case]
            low, high = (_round(x, 2) for x in step["paired_ratio_ci95"])
            row.append(f"{_round(step['paired_ratio'], 2)} [{low}, {high}]")
        row += [_round(m["cases"][case]["peak_ratio"], 3) if with_memory else "" for m in memories]
        rows.append(row)
    return _pipe(rows)


def docs_tables(results: Path = RESULTS) -> dict[Path, str]:
    """The ``.rst`` files ``docs/results.rst`` includes, keyed by path, from the result files."""
    demo = _read("demo_seeds/demo_summary.json", results)
    demo2000 = _read("demo_seeds/demo2000_summary.json", results)
    sweep = _read("sweep_rotten_tomatoes/summary.json", results)
    bench, llama = _read("bench.json", results), _read("bench_llama.json", results)
    memories = [_read("memory.json", results), _read("memory_llama.json", results)]
    cuda = _read("cuda_check_h200.json", results)
    generation = (results / "generation_speed.md").read_text()
    trivia = (results / "trivia" / "report.md").read_text()
    layout_runs = [run for run in _read("sampling_overhead.json", results) if "site_layout" in run]
    tables = {
        "demo_seeds/demo_summary.rst": (
            _measured_at(demo, "demo_seeds/demo_summary.json"),
            list_table("500 sentences × 6 epochs, seeds 0, 1, 2 (mean ± std)", _demo(demo, True)),
        ),
        "demo_seeds/demo2000_summary.rst": (
            _measured_at(demo2000, "demo_seeds/demo2000_summary.json"),
            list_table("2,000 sentences × 1 epoch, seeds 0, 1, 2 (mean ± std)", _demo(demo2000, False)),
        ),
        "calibration_study/study.rst": (
            "Source: ``calibration_study/runs.json``, ``calibration_study_regimes/runs.json``.",
            list_table("validation split, 3 seeds per cell (mean ± std); S = 10 for MonteCLoRA", _study(results)),
        ),
        "sweep_rotten_tomatoes/summary.rst": (
            _measured_at(sweep, "sweep_rotten_tomatoes/summary.json"),
            list_table("Spread over the grid (8 cells for MonteCLoRA and LoRA, 2 for full fine-tuning)", _sweep(sweep)),
        ),
        "speed.rst": (
            "Source: ``bench.json``, ``bench_llama.json``, ``cuda_check_h200.json``.",
            list_table("One SVI step, MonteCLoRA against the LoRA mode of the same code", _speed(bench, llama, cuda)),
        ),
        "bench_suite.rst": (
            "Source: ``bench.json``, ``bench_llama.json``, ``memory.json``, ``memory_llama.json``.",
            list_table(
                "Training step against PEFT's LoRA: time [95% interval], peak memory", _suite([bench, llama], memories)
            ),
        ),
        "generation_speed.rst": (
            "Source: ``generation_speed.json``.",
            list_table(
                "16 trivia prompts × 16 new tokens, median of 3 interleaved rounds, CPU", _first_table(generation)
            ),
        ),
        "site_layout.rst": (
            _measured_at(layout_runs[-1], "sampling_overhead.json"),
            list_table(
                "MonteCLoRA-only host work of one SVI step (CPU, medians of 200 steps; the network left out)",
                _site_layouts(layout_runs),
            ),
        ),
        "trivia/report.rst": (
            "Source: ``trivia/metrics.json``.",
            list_table("150 held-out questions, one seed", _first_table(trivia)),
        ),
    }
    header = ".. Written by benchmarks/tables.py from the result files; do not edit.\n\n"
    return {results / name: header + line + "\n\n" + table for name, (line, table) in tables.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write the tables docs/results.rst includes")
    parser.add_argument("--check", action="store_true", help="only list the files that are out of date")
    args = parser.parse_args(argv)
    stale = []
    for path, text in docs_tables().items():
        if not path.exists() or path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    for path in stale:
        print(("out of date: " if args.check else "wrote ") + str(path.relative_to(RESULTS.parent.parent)))
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
