"""Median SVI step time of MonteCLoRA against the MAP/LoRA mode of the same code, interleaved.

MiniLM (the packaged all-MiniLM-L6-v2), batch 16 x 64 tokens, rank 8, query+value, one process:
the two step functions alternate A B A B so that drift of the machine hits both alike.

    python benchmarks/step_time.py [--steps 30] [--warmup 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch
import transformers
from provenance import provenance
from transformers import AutoModelForSequenceClassification

from pyro_monteclora import EmptyGuide, MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.data.classification import default_encoder_path
from pyro_monteclora.storage.atomic import atomic_write_json
from pyro_monteclora.training.svi import ELBO_KINDS


def make_step(mode: str, batch: dict, dataset_size: int, loss: str):
    hf = AutoModelForSequenceClassification.from_pretrained(default_encoder_path(), num_labels=2)
    model = MonteCLoRAModel(
        hf,
        MonteCLoRAConfig(rank=8, target_modules=["query", "value"], modules_to_save=["classifier"]),
        adapter_mode="sample" if mode == "monteclora" else "mean",
    )
    guide = MonteCLoRAGuide(model) if mode == "monteclora" else EmptyGuide(model)
    model.dataset_size = dataset_size
    loss_module = ELBO_KINDS[loss]()(model, guide)
    params = [p for p in loss_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step() -> float:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        value = loss_module(**batch) / dataset_size
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        return time.perf_counter() - started

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--loss", choices=sorted(ELBO_KINDS), default="monteclora")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    origin = provenance()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    pyro.set_rng_seed(0)
    batch = {
        "input_ids": torch.randint(1000, 20000, (args.batch_size, args.tokens)),
        "attention_mask": torch.ones(args.batch_size, args.tokens, dtype=torch.long),
        "labels": torch.randint(0, 2, (args.batch_size,)),
    }
    steps = {mode: make_step(mode, batch, 10_000, args.loss) for mode in ("monteclora", "lora")}
    pyro.enable_validation(False)  # as fit() runs its steps
    times = {mode: [] for mode in steps}
    for i in range(args.warmup + args.steps):
        for mode, step in steps.items():
            elapsed = step()
            if i >= args.warmup:
                times[mode].append(elapsed)
    medians = {mode: statistics.median(values) for mode, values in times.items()}
    ratio = medians["monteclora"] / medians["lora"]
    result = {
        "model": "all-MiniLM-L6-v2",
        "batch": [args.batch_size, args.tokens],
        "rank": 8,
        "targets": ["query", "value"],
        "loss": args.loss,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "median_seconds": medians,
        "ratio_monteclora_over_lora": ratio,
        "provenance": origin,
    }
    print(
        f"median SVI step: MonteCLoRA {medians['monteclora'] * 1e3:.1f} ms, "
        f"LoRA mode {medians['lora'] * 1e3:.1f} ms, ratio {ratio:.3f}x"
    )
    if args.json:
        atomic_write_json(args.json, result)


if __name__ == "__main__":
    main()
