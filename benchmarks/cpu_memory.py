"""Peak CPU memory of a training step (MonteCLoRA SVI against PEFT's LoRA, PEFT's MonteCLoRA
variant, a plain-PyTorch LoRA and our LoRA mode) and of the S-sample predictive, as ratios.

Measuring a CPU peak honestly takes three precautions, because glibc keeps freed memory and a
process's peak includes loading the model:

* every case runs in a **fresh process** (``--case``), repeated ``--repeats`` times, interleaved;
* ``MALLOC_MMAP_THRESHOLD_=65536`` makes every tensor above 64 KiB its own ``mmap``, returned to
  the system when freed, so the resident set follows the live tensors instead of the allocator's
  cache (without it, repeated runs of one case differed by 4x);
* after two warm-up steps (the optimiser's moments exist from the first), the kernel's high-water
  mark is reset (``echo 5 > /proc/self/clear_refs``), so the peak read afterwards (``VmHWM``) is
  the training steps' own: the persistent state (weights, adapters, optimiser moments, any
  pre-drawn noise) plus the largest working set of a step.

Reported per case: the resident set before the steps (``persistent``), the peak during them, and
``working = peak - persistent`` (activations, gradients, the step's temporaries); ratios are to
PEFT's LoRA. Linux only (``/proc``).

    python benchmarks/cpu_memory.py [--model minilm|llama] [--repeats 3] [--output benchmarks/results/memory]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEP_CASES = ["peft-lora", "plain-lora", "peft-monteclora", "ours-lora-mode", "ours-monteclora"]
PREDICTIVE_SAMPLES = [1, 4, 10]


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def run_case(name: str, kind: str, steps: int) -> dict:
    """In this (fresh) process: build the case, warm up, reset the peak, run, read the peak."""
    import pyro
    import transformers

    sys.path.insert(0, str(HERE))
    import bench_suite

    transformers.logging.set_verbosity_error()
    pyro.set_rng_seed(0)
    if name.startswith("predict-S"):
        from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
        from pyro_monteclora.infer.predictive import predict

        samples = int(name.split("S")[-1])
        model = MonteCLoRAModel(
            bench_suite.base_model(kind), MonteCLoRAConfig(rank=8, target_modules=bench_suite.TARGETS[kind])
        )
        guide = MonteCLoRAGuide(model)
        data = bench_suite.batch(kind, 64)
        loader = [dict(data)]

        def step():
            predict(model, guide, loader, num_samples=samples)
    else:
        step = bench_suite.make_case(name, kind, bench_suite.batch(kind))
    for _ in range(2):
        step()
    gc.collect()
    persistent = _status_mib("VmRSS")
    _reset_peak()
    for _ in range(steps):
        step()
    peak = _status_mib("VmHWM")
    return {"persistent_mib": persistent, "peak_mib": peak, "working_mib": peak - persistent}


def measure(kind: str, repeats: int, steps: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", TOKENIZERS_PARALLELISM="false")
    cases = STEP_CASES + [f"predict-S{s}" for s in PREDICTIVE_SAMPLES]
    runs = {name: [] for name in cases}
    for repeat in range(repeats):
        for name in cases:  # interleaved: every case once per repeat
            out = subprocess.run(
                [sys.executable, __file__, "--case", name, "--model", kind, "--steps", str(steps)],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            runs[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(repeat, name, runs[name][-1], flush=True)
    table = {}
    for name, values in runs.items():
        row = {key: statistics.median(v[key] for v in values) for key in values[0]}
        row["peak_range_mib"] = max(v["peak_mib"] for v in values) - min(v["peak_mib"] for v in values)
        table[name] = row
    floor = table["peft-lora"]
    for name in STEP_CASES:
        table[name]["peak_ratio"] = table[name]["peak_mib"] / floor["peak_mib"]
        table[name]["working_ratio"] = table[name]["working_mib"] / floor["working_mib"]
    one = table["predict-S1"]
    for s in PREDICTIVE_SAMPLES:
        table[f"predict-S{s}"]["peak_ratio_to_S1"] = table[f"predict-S{s}"]["peak_mib"] / one["peak_mib"]
    return {"cases": table, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["minilm", "llama"], default="minilm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # the child process
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.steps)), flush=True)
        return

    import pyro
    import torch
    import transformers
    from provenance import provenance, provenance_line

    from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text

    origin = provenance()
    output = Path(args.output or HERE / "results" / ("memory" if args.model == "minilm" else f"memory_{args.model}"))
    report = measure(args.model, args.repeats, args.steps)
    report["setup"] = {
        "model": args.model,
        "batch": [16, 64],
        "predictive_batch": [64, 64],
        "rank": 8,
        "repeats": args.repeats,
        "steps": args.steps,
        "method": "fresh process per case, MALLOC_MMAP_THRESHOLD_=65536, VmHWM reset after 2 warm-up steps",
    }
    report["environment"] = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    report["provenance"] = origin
    cases = report["cases"]
    lines = [
        "| training step | persistent MiB | peak MiB | working MiB | peak × PEFT LoRA | working × PEFT LoRA |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {n} | {cases[n]['persistent_mib']:.0f} | {cases[n]['peak_mib']:.0f} | {cases[n]['working_mib']:.0f} "
        f"| {cases[n]['peak_ratio']:.3f} | {cases[n]['working_ratio']:.3f} |"
        for n in STEP_CASES
    ]
    lines += ["", "| predictive, batch 64 | peak MiB | × S = 1 |", "|---|---:|---:|"]
    lines += [
        f"| S = {s} | {cases[f'predict-S{s}']['peak_mib']:.0f} | {cases[f'predict-S{s}']['peak_ratio_to_S1']:.3f} |"
        for s in PREDICTIVE_SAMPLES
    ]
    table = "\n".join(lines)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output.with_suffix(".json"), report)
    atomic_write_text(
        output.with_suffix(".md"), f"# Peak CPU memory ({args.model})\n\n{table}\n\n{provenance_line(origin)}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
