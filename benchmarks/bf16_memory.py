"""Memory of a MonteCLoRA SVI step on SmolLM2-135M-Instruct with the frozen base in fp32 and in bf16.

Five ways to get and run the base, each case in a fresh process (``--case``) on the CPU:

* ``fp32``: ``from_pretrained`` in fp32, adapters on top (the default);
* ``cast-after-load``: fp32 ``from_pretrained``, then :func:`~pyro_monteclora.nn.precision.cast_frozen`
  to bf16 (what ``train --dtype bf16`` does);
* ``bf16-load``: ``from_pretrained(..., dtype=torch.bfloat16)``, adapters on top, then ``cast_frozen``
  (which keeps the trainable tensors fp32); ``bf16-no-autocast`` the same without ``autocast``;
* ``bf16-file``: the same from a bf16 copy of the base saved once (``--bf16-copy``): the Python
  recipe the docs give, since loading the fp32 file touches all its pages first.

Each runs three SVI steps (rank 8 on q/k/v, batch 4 × 64 tokens of trivia questions, under
``autocast`` for the bf16 cases) and reports the bytes of the parameters (frozen and trainable),
the peak resident memory (``VmRSS`` sampled every 10 ms, above the process after imports: it
counts the safetensors file's pages that the fp32 weights are mapped from) while loading and while
stepping, and the step time. Writes
``bf16_memory.json`` and ``bf16_memory.rst`` (the docs include it) into ``--output``::

    python benchmarks/bf16_memory.py            # about 2 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

__all__ = ["main", "run_in_fresh_processes"]

CASES = ("fp32", "cast-after-load", "bf16-load", "bf16-no-autocast", "bf16-file")
LABELS = {
    "fp32": "fp32 base",
    "cast-after-load": "fp32 load, then ``cast_frozen`` (``train --dtype bf16``)",
    "bf16-load": "``from_pretrained(dtype=torch.bfloat16)``, then ``cast_frozen``",
    "bf16-no-autocast": "the same, run without ``autocast``",
    "bf16-file": "a bf16 copy saved once, loaded with ``dtype=torch.bfloat16``, then ``cast_frozen``",
}
MIB = 2**20


def _rss() -> int:
    """Resident memory, anonymous and file-backed (the fp32 weights are the safetensors file's pages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class _PeakSampler:
    """The highest ``VmRSS`` seen since :meth:`reset`, sampled in a thread."""

    def __init__(self, interval: float = 0.01):
        self.peak, self.interval, self._stop = _rss(), interval, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss())
            time.sleep(self.interval)

    def reset(self) -> int:
        self.peak = _rss()
        return self.peak

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss())


def run_in_fresh_processes(script: Path, cases, extra=()) -> list:
    """``python script --case C *extra`` for each case, one fresh process after the other (so no
    case sees another's allocations), each printing its result as its last JSON line; returns the
    results. ``MALLOC_MMAP_THRESHOLD_`` makes freed memory go back to the system."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    results = []
    for case in cases:
        done = subprocess.run(
            [sys.executable, str(Path(script).resolve()), "--case", case, *extra],
            env=env,
            cwd="/",
            capture_output=True,
            text=True,
            check=True,
        )
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print({k: v for k, v in results[-1].items() if k != "losses"}, flush=True)
    return results


def save_bf16_copy(folder: Path) -> Path:
    """The offline SmolLM2 saved once in bf16 (a safetensors file half the size of the fp32 one)."""
    import torch
    from transformers import AutoModelForCausalLM

    from pyro_monteclora.storage import default_decoder_path

    if not (folder / "config.json").is_file():
        source = default_decoder_path()
        AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, dtype=torch.bfloat16).save_pretrained(folder)
    return folder


def run_case(case: str, bf16_copy: Path = None) -> dict:
    """One case in this process (see the module)."""
    import pyro
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
    from pyro_monteclora.data import InstructionData, causal_lm_loader, load_trivia
    from pyro_monteclora.infer.elbo import MonteCLoRAELBO
    from pyro_monteclora.nn.precision import autocast, cast_frozen
    from pyro_monteclora.storage import default_decoder_path

    torch.set_num_threads(2)
    path = default_decoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    records = load_trivia(["worldcapitals"], seed=0)[:16]
    loader = causal_lm_loader(
        InstructionData([r["question"] for r in records], [r["answer"] for r in records]),
        tokenizer,
        batch_size=4,
        max_length=64,
    )
    batches = [next(iter(loader)) for _ in range(3)]
    sampler = _PeakSampler()
    before = sampler.reset()
    dtype = torch.bfloat16 if case != "fp32" else torch.float32
    load_dtype = torch.bfloat16 if case.startswith("bf16") else torch.float32
    source = bf16_copy if case == "bf16-file" else path
    network = AutoModelForCausalLM.from_pretrained(source, use_safetensors=True, dtype=load_dtype)
    pyro.set_rng_seed(0)
    model = MonteCLoRAModel(network, MonteCLoRAConfig(rank=8, target_modules=["q_proj", "k_proj", "v_proj"]))
    if case != "fp32":
        cast_frozen(model.network, torch.bfloat16)
    model.dataset_size = len(records)
    guide = MonteCLoRAGuide(model)
    load_peak = sampler.peak
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    trainable_dtypes = sorted({str(p.dtype) for p in model.parameters() if p.requires_grad})
    elbo = MonteCLoRAELBO()
    guide(**{k: v for k, v in batches[0].items() if k != "labels"})  # create the guide's parameters
    parameters = [p for p in list(model.parameters()) + list(guide.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    sampler.reset()
    times = []
    for batch in batches:
        started = time.perf_counter()
        optimizer.zero_grad()
        with autocast("cpu", dtype if case in ("cast-after-load", "bf16-load") else None):
            loss = elbo.differentiable_loss(model, guide, **batch)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    step_peak = sampler.stop()
    return {
        "case": case,
        "frozen_mib": frozen / MIB,
        "trainable_mib": trainable / MIB,
        "trainable_dtypes": trainable_dtypes,
        "load_peak_mib": (load_peak - before) / MIB,
        "step_peak_mib": (step_peak - before) / MIB,
        "step_seconds": sorted(times)[len(times) // 2],
        "loss_finite": bool(torch.isfinite(loss).item()),
    }


def _table(record: dict) -> str:
    from provenance import provenance_line

    rows = {row["case"]: row for row in record["cases"]}
    base = rows["fp32"]
    lines = [
        ".. list-table:: One SVI step on SmolLM2-135M-Instruct, CPU, batch 4 × 64 (peak resident memory above the "
        "process after imports)",
        "   :header-rows: 1",
        "",
        "   * - base",
        "     - frozen weights MiB",
        "     - trainable MiB",
        "     - peak while loading MiB",
        "     - peak while stepping MiB",
        "     - × fp32 (stepping)",
        "     - step s",
    ]
    for case in CASES:
        row = rows[case]
        lines += [
            f"   * - {LABELS[case]}",
            f"     - {row['frozen_mib']:.0f}",
            f"     - {row['trainable_mib']:.1f}",
            f"     - {row['load_peak_mib']:.0f}",
            f"     - {row['step_peak_mib']:.0f}",
            f"     - {row['step_peak_mib'] / base['step_peak_mib']:.2f}",
            f"     - {row['step_seconds']:.2f}",
        ]
    lines += ["", provenance_line(record["provenance"]).replace("`", "``"), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=CASES, help="run one case in this process and print it as JSON")
    parser.add_argument("--output", default=str(HERE / "results" / "bf16_memory"))
    parser.add_argument("--bf16-copy", default="/tmp/pyro-monteclora-smollm2-bf16", help="where the bf16 copy is saved")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, Path(args.bf16_copy))))
        return 0
    from provenance import provenance

    from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text

    measured = provenance(REPO)
    save_bf16_copy(Path(args.bf16_copy))
    cases = run_in_fresh_processes(Path(__file__), CASES, ["--bf16-copy", args.bf16_copy])
    record = {"cases": cases, "provenance": measured}
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "bf16_memory.json", record)
    atomic_write_text(output / "bf16_memory.rst", _table(record))
    print(_table(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
