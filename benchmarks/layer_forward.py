"""One adapter layer's forward and backward: this library's fp32 path (``MonteCLoRALinear``: one
fused ``addmm`` with the scaling on ``B``) against PEFT's form ``base(x) + lora_B(lora_A(x)) *
scaling`` written out in plain PyTorch, on the same batch (16 x 64 tokens, 384 wide, r = 8, the
input requiring grad as inside a network), interleaved, medians after warm-up; CPU.

    python benchmarks/layer_forward.py [--repeats 400] [--json benchmarks/results/layer_forward.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from provenance import provenance
from torch import nn

from pyro_monteclora import MonteCLoRAConfig
from pyro_monteclora.nn.layers import MonteCLoRALinear
from pyro_monteclora.storage.atomic import atomic_write_json


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    origin = provenance()
    torch.manual_seed(0)
    base = nn.Linear(384, 384).requires_grad_(False)
    layer = MonteCLoRALinear(base, MonteCLoRAConfig(rank=8, alpha=16), "layer")
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(16, 64, 384, requires_grad=True)
    grad = torch.randn(16, 64, 384)

    def peft_form(x):
        return base(x) + F.linear(F.linear(x, layer.lora_A_mean), layer.lora_B) * layer.scaling

    cases = {"monteclora-linear (fused)": layer.__call__, "peft form": peft_form}
    times = {name: [] for name in cases}
    for repeat in range(args.warmup + args.repeats):
        for name, forward in cases.items():
            started = time.perf_counter()
            forward(x).backward(grad)
            if repeat >= args.warmup:
                times[name].append(time.perf_counter() - started)
            x.grad = layer.lora_A_mean.grad = layer.lora_B.grad = None
    medians = {name: 1e3 * statistics.median(values) for name, values in times.items()}
    report = {
        "median_ms": medians,
        "ratio": medians["monteclora-linear (fused)"] / medians["peft form"],
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "provenance": origin,
    }
    print(report)
    if args.json:
        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
