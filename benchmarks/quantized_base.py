"""Memory and step time of a MonteCLoRA SVI step on SmolLM2-135M-Instruct with the frozen base in
fp32, 8-bit (LLM.int8) and 4-bit (NF4 with double quantisation), on the CPU, side by side.

Each case runs in a fresh process (``--case``): the base is loaded as ``train --quantize`` loads it
(:meth:`~pyro_monteclora.quantization.Quantization.from_pretrained_kwargs`; the ``lm_head`` stays
fp32), MonteCLoRA adapters go on q/k/v (rank 8), and five SVI steps run on batches of 4 × 64
tokens of trivia questions. It reports the bytes of the frozen weights (as stored: 4-bit codes and
their block constants, int8 codes and row scales), the peak resident memory (``VmRSS`` sampled
every 10 ms, above the process after imports) while loading and while stepping, the median step
time, and the ratios to fp32. ``4bit-bf16`` multiplies in bf16 (``--dtype bf16``: the compute
dtype QLoRA uses on GPUs). Writes ``quantized_base.json`` and ``quantized_base.rst`` (the docs
include it) into ``--output``::

    python benchmarks/quantized_base.py            # about 3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from bf16_memory import MIB, _PeakSampler, run_in_fresh_processes  # noqa: E402

__all__ = ["main", "run_case"]

CASES = ("fp32", "8bit", "4bit", "4bit-bf16")
LABELS = {
    "fp32": "fp32 base",
    "8bit": "8-bit base (LLM.int8, ``--quantize 8bit``)",
    "4bit": "4-bit base (NF4, double quantisation, fp32 compute: ``--quantize 4bit``)",
    "4bit-bf16": "4-bit base, bf16 compute (``--quantize 4bit --dtype bf16``)",
}
STEPS = 5


def frozen_bytes(network) -> int:
    """Bytes of the frozen weights as stored, with a 4-bit layer's block constants (its
    ``quant_state``: absmax codes, their second-level constants and the code book)."""
    total = 0
    for parameter in network.parameters():
        if parameter.requires_grad:
            continue
        total += parameter.numel() * parameter.element_size()
        state = getattr(parameter, "quant_state", None)
        if state is not None:
            tensors = [state.absmax, state.code]
            if getattr(state, "state2", None) is not None:
                tensors += [state.state2.absmax, state.state2.code]
            total += sum(t.numel() * t.element_size() for t in tensors if t is not None)
        scales = getattr(parameter, "SCB", None)
        if scales is not None:
            total += scales.numel() * scales.element_size()
    return total


def run_case(case: str, device: str = "cpu") -> dict:
    """One case in this process (see the module); on CUDA the memory is the allocator's peak."""
    import pyro
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
    from pyro_monteclora.data import InstructionData, causal_lm_loader, load_trivia
    from pyro_monteclora.infer.elbo import MonteCLoRAELBO
    from pyro_monteclora.nn.precision import autocast, cast_frozen
    from pyro_monteclora.quantization import Quantization, describe_quantization
    from pyro_monteclora.storage import default_decoder_path

    torch.set_num_threads(2)
    cuda = device.startswith("cuda")
    path = default_decoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    records = load_trivia(["worldcapitals"], seed=0)[: 4 * STEPS]
    loader = causal_lm_loader(
        InstructionData([r["question"] for r in records], [r["answer"] for r in records]),
        tokenizer,
        batch_size=4,
        max_length=64,
    )
    batches = [{k: v.to(device) for k, v in batch.items()} for batch in loader]
    compute = torch.bfloat16 if case == "4bit-bf16" else torch.float32
    kwargs = {"use_safetensors": True}
    if case != "fp32":
        kwargs.update(Quantization.from_name(case.split("-")[0], compute_dtype=compute).from_pretrained_kwargs(device))
    sampler = _PeakSampler()
    before = sampler.reset()
    network = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if case == "fp32":
        network.to(device)
    pyro.set_rng_seed(0)
    model = MonteCLoRAModel(network, MonteCLoRAConfig(rank=8, target_modules=["q_proj", "k_proj", "v_proj"]))
    if compute != torch.float32:
        cast_frozen(model.network, compute)
    model.dataset_size = len(records)
    guide = MonteCLoRAGuide(model)
    load_peak = sampler.peak
    quantization = describe_quantization(model.network)
    elbo = MonteCLoRAELBO()
    guide(**{k: v for k, v in batches[0].items() if k != "labels"})  # create the guide's parameters
    parameters = [p for p in list(model.parameters()) + list(guide.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    sampler.reset()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for batch in batches:
        started = time.perf_counter()
        optimizer.zero_grad()
        with autocast(device, compute):
            loss = elbo.differentiable_loss(model, guide, **batch)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
        losses.append(float(loss))
    step_peak = sampler.stop()
    if cuda:  # the GPU's own memory, not the host's
        load_peak, before, step_peak = 0, 0, torch.cuda.max_memory_allocated()
    return {
        "case": case,
        "device": device,
        "quantization": quantization.to_dict() if quantization is not None else None,
        "frozen_mib": frozen_bytes(model.network) / MIB,
        "trainable_mib": sum(p.numel() * p.element_size() for p in parameters) / MIB,
        "load_peak_mib": (load_peak - before) / MIB,
        "step_peak_mib": (step_peak - before) / MIB,
        "step_seconds": sorted(times)[len(times) // 2],
        "losses": losses,
    }


def _table(record: dict) -> str:
    from provenance import provenance_line

    rows = {row["case"]: row for row in record["cases"]}
    base = rows["fp32"]
    cuda = record.get("device", "cpu").startswith("cuda")
    where = "CUDA" if cuda else "CPU (2 cores)"
    memory = "peak GPU memory allocated while stepping" if cuda else "memory above the process after imports"
    lines = [
        f".. list-table:: One MonteCLoRA SVI step on SmolLM2-135M-Instruct, {where}, batch 4 × 64, "
        f"rank 8 on q/k/v ({memory}; medians of 5 steps)",
        "   :header-rows: 1",
        "",
        "   * - base",
        "     - frozen weights MiB",
        "     - × fp32",
        "     - peak while loading MiB",
        "     - peak while stepping MiB",
        "     - × fp32",
        "     - step s",
        "     - × fp32",
    ]
    for case in CASES:
        row = rows[case]
        lines += [
            f"   * - {LABELS[case]}",
            f"     - {row['frozen_mib']:.0f}",
            f"     - {row['frozen_mib'] / base['frozen_mib']:.2f}",
            f"     - {row['load_peak_mib']:.0f}",
            f"     - {row['step_peak_mib']:.0f}",
            f"     - {row['step_peak_mib'] / base['step_peak_mib']:.2f}",
            f"     - {row['step_seconds']:.2f}",
            f"     - {row['step_seconds'] / base['step_seconds']:.2f}",
        ]
    lines += ["", provenance_line(record["provenance"]).replace("`", "``"), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=CASES, help="run one case in this process and print it as JSON")
    parser.add_argument("--output", default=str(HERE / "results" / "quantized_base"))
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (memory is then the GPU allocator's peak)")
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args.device)))
        return 0
    from provenance import provenance

    from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text

    measured = provenance(REPO)
    cases = run_in_fresh_processes(Path(__file__), CASES, ["--device", args.device])
    record = {"cases": cases, "device": args.device, "provenance": measured}
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "quantized_base.json", record)
    atomic_write_text(output / "quantized_base.rst", _table(record))
    print(_table(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
