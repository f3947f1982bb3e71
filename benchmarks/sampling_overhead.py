"""The MonteCLoRA-only work of one SVI step, with the network left out: the guide's draws, the
model's sites and perturbations, the closed-form KL, and their backward, for the 12 adapted layers
of MiniLM (r = 8, query + value; ``--model llama`` for the suite's tiny Llama, ``--all-linear`` to
adapt every linear layer; ``--site-layout stacked`` for one site per kind and factor width); medians
of ``--steps`` after 20 warm-up steps (CPU).

This is what a MonteCLoRA step adds to a LoRA step besides the extra autograd work inside the
network's backward. ``--label`` names the code measured (run it on two checkouts with
``PYTHONPATH`` to compare them); the result is appended to ``results/sampling_overhead.json``, with
the provenance (commit) of the checkout whose ``pyro_monteclora`` was imported.

    python benchmarks/sampling_overhead.py --label batched-guide [--steps 200] [--model llama] [--all-linear]
        [--site-layout stacked]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import pyro
import torch
import transformers
from provenance import provenance
from pyro import poutine

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.storage.atomic import atomic_write_json

RESULTS = Path(__file__).resolve().parent / "results" / "sampling_overhead.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--label", required=True, help="what code this is (e.g. a commit)")
    parser.add_argument(
        "--model", choices=["minilm", "llama"], default="minilm", help="llama: bench_suite.py's random 6-layer Llama"
    )
    parser.add_argument("--all-linear", action="store_true", help="adapt every linear layer, not q/v")
    parser.add_argument(
        "--site-layout",
        choices=["per-layer", "stacked"],
        default="per-layer",
        help="MonteCLoRAConfig.site_layout (stacked: one site per kind and factor width for all layers)",
    )
    args = parser.parse_args()
    origin = provenance()  # of the imported pyro_monteclora: maybe another checkout
    transformers.logging.set_verbosity_error()
    pyro.set_rng_seed(0)
    from bench_suite import ALL_LINEAR, TARGETS, base_model  # the suite's models and target lists

    network = base_model(args.model)
    targets = (ALL_LINEAR if args.all_linear else TARGETS)[args.model]
    head = "classifier" if args.model == "minilm" else "score"
    layout = {"site_layout": args.site_layout} if args.site_layout != "per-layer" else {}  # older checkouts lack it
    model = MonteCLoRAModel(network, MonteCLoRAConfig(rank=8, target_modules=targets, modules_to_save=[head], **layout))
    guide = MonteCLoRAGuide(model)
    adapters = list(model.adapters().values())
    try:  # all layers' factors formed together, as MonteCLoRAModel does since 977c9bd
        from pyro_monteclora.nn.layers import sample_adapter_factors

        def sample_factors():
            sample_adapter_factors(adapters)
    except ImportError:  # an older checkout: one layer at a time

        def sample_factors():
            for adapter in adapters:
                adapter.sample_factors()

    def parts():
        started = time.perf_counter()
        guide_trace = poutine.trace(guide).get_trace()
        drawn = time.perf_counter()
        with poutine.trace(), poutine.replay(trace=guide_trace):
            sample_factors()
        sited = time.perf_counter()
        kl = guide.kl_divergence()
        kl_done = time.perf_counter()
        loss = sum(adapter.factors()[0].sum() for adapter in adapters) + kl
        for adapter in adapters:
            adapter.clear_factors()
        loss.backward()
        ended = time.perf_counter()
        return drawn - started, sited - drawn, kl_done - sited, ended - kl_done

    for _ in range(20):
        parts()
    times = [parts() for _ in range(args.steps)]
    names = ("guide", "model_sites", "kl", "backward")
    row = {name: 1e3 * statistics.median(t[i] for t in times) for i, name in enumerate(names)}
    row["total"] = 1e3 * statistics.median(sum(t) for t in times)
    row.update(
        label=args.label,
        model=args.model,
        steps=args.steps,
        layers=len(adapters),
        site_layout=args.site_layout,
        torch=torch.__version__,
        provenance=origin,
    )
    runs = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    atomic_write_json(RESULTS, [r for r in runs if r.get("label") != args.label] + [row])
    print(json.dumps(row))


if __name__ == "__main__":
    main()
