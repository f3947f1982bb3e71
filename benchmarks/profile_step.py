"""Where a MonteCLoRA SVI step spends the time that a LoRA step does not: ``torch.profiler`` over
the same batch for both (MiniLM, 16 x 64 tokens, r = 8, query + value, CPU), and the operators
whose self time differs most.

    python benchmarks/profile_step.py [--steps 10] [--output benchmarks/results/profile_step]

Writes a markdown table (per step: total, and each operator's self CPU time and call count in
both, sorted by the difference) and the JSON behind it.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import pyro
import torch
import transformers
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_suite  # noqa: E402
from provenance import provenance, provenance_line  # noqa: E402

from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text  # noqa: E402


def operator_times(step, steps: int, warmup: int = 3) -> dict:
    """``{operator: (self CPU seconds per step, calls per step)}`` and the wall time per step."""
    for _ in range(warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    table = defaultdict(lambda: [0.0, 0])
    for event in prof.key_averages():
        table[event.key][0] += event.self_cpu_time_total / 1e6 / steps
        table[event.key][1] += event.count / steps
    total = sum(seconds for seconds, _ in table.values())
    return {"total_s": total, "operators": {k: tuple(v) for k, v in table.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--model", choices=["minilm", "llama"], default="minilm")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--output", default=str(HERE / "results" / "profile_step"))
    args = parser.parse_args()
    origin = provenance()
    transformers.logging.set_verbosity_error()
    pyro.set_rng_seed(0)
    data = bench_suite.batch(args.model)
    results = {}
    for name in ("ours-lora-mode", "ours-monteclora"):
        pyro.clear_param_store()
        results[name] = operator_times(bench_suite.make_case(name, args.model, data), args.steps)
    lora, mc = results["ours-lora-mode"], results["ours-monteclora"]
    keys = set(lora["operators"]) | set(mc["operators"])
    rows = []
    for key in keys:
        a = lora["operators"].get(key, (0.0, 0))
        b = mc["operators"].get(key, (0.0, 0))
        rows.append(
            {
                "operator": key,
                "lora_ms": 1e3 * a[0],
                "monteclora_ms": 1e3 * b[0],
                "difference_ms": 1e3 * (b[0] - a[0]),
                "lora_calls": a[1],
                "monteclora_calls": b[1],
            }
        )
    rows.sort(key=lambda r: -abs(r["difference_ms"]))
    extra = 1e3 * (mc["total_s"] - lora["total_s"])
    lines = [
        f"Profiled self CPU time per step ({args.model}, batch 16 x 64, r = 8): LoRA mode "
        f"{1e3 * lora['total_s']:.1f} ms, MonteCLoRA {1e3 * mc['total_s']:.1f} ms "
        f"({mc['total_s'] / lora['total_s']:.3f}x, +{extra:.1f} ms).",
        "",
        "| operator | LoRA ms | MonteCLoRA ms | difference ms | calls (LoRA / MonteCLoRA) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| `{r['operator']}` | {r['lora_ms']:.2f} | {r['monteclora_ms']:.2f} | {r['difference_ms']:+.2f} "
        f"| {r['lora_calls']:.0f} / {r['monteclora_calls']:.0f} |"
        for r in rows[: args.top]
    ]
    table = "\n".join(lines)
    output = Path(args.output)
    atomic_write_json(
        output.with_suffix(".json"),
        {
            "lora_mode_total_s": lora["total_s"],
            "monteclora_total_s": mc["total_s"],
            "rows": rows,
            "torch": torch.__version__,
            "steps": args.steps,
            "provenance": origin,
        },
    )
    atomic_write_text(
        output.with_suffix(".md"), f"# Profile of one training step\n\n{table}\n\n{provenance_line(origin)}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
