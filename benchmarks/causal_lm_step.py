"""SVI step of SmolLM2-135M-Instruct on trivia questions with and without skipping the vocabulary
projection of prompt positions (HF's ``logits_to_keep``, which ``HFPyroModel.forward`` passes when
a causal LM accepts it), interleaved A B A B on the same batches, medians.

    python benchmarks/causal_lm_step.py [--batches 8] [--output benchmarks/results/causal_lm_step.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import pyro
import torch
import transformers
from provenance import provenance
from transformers import AutoModelForCausalLM, AutoTokenizer

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.data.causal_lm import causal_lm_loader
from pyro_monteclora.data.instructions import InstructionData
from pyro_monteclora.data.trivia import load_trivia
from pyro_monteclora.infer.elbo import MonteCLoRAELBO
from pyro_monteclora.storage.atomic import atomic_write_json
from pyro_monteclora.storage.pretrained import default_decoder_path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="batches of 8 questions, each timed both ways")
    parser.add_argument("--output", default=str(RESULTS / "causal_lm_step.json"))
    args = parser.parse_args()
    origin = provenance()
    transformers.logging.set_verbosity_error()
    pyro.set_rng_seed(0)
    path = default_decoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = MonteCLoRAModel(
        AutoModelForCausalLM.from_pretrained(path, use_safetensors=True),
        MonteCLoRAConfig(rank=8, target_modules=["q_proj", "k_proj", "v_proj"], sample_scaler=0.05),
    )
    guide = MonteCLoRAGuide(model)
    records = load_trivia(seed=0)[: 8 * args.batches]
    data = InstructionData(
        [r["question"] + " Reply with the answer only." for r in records], [r["answer"] for r in records]
    )
    batches = list(causal_lm_loader(data, tokenizer, batch_size=8, max_length=96))
    model.dataset_size = 320
    loss = MonteCLoRAELBO()(model, guide)
    params = [p for p in loss.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step(batch, skip_prompt_logits: bool) -> float:
        model._accepts_logits_to_keep = skip_prompt_logits  # what HFPyroModel detected, switched off for B
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        (loss(**batch) / 320).backward()
        optimizer.step()
        return time.perf_counter() - started

    for batch in batches[:2]:  # warm-up
        step(batch, True)
        step(batch, False)
    times = {True: [], False: []}
    for batch in batches:
        for keep in (True, False):
            times[keep].append(step(batch, keep))
    report = {
        "median_s_skipping_prompt_logits": statistics.median(times[True]),
        "median_s_all_logits": statistics.median(times[False]),
        "batch": list(batches[0]["input_ids"].shape),
        "batches": len(batches),
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
        },
        "provenance": origin,
    }
    report["ratio"] = report["median_s_skipping_prompt_logits"] / report["median_s_all_logits"]
    atomic_write_json(args.output, report)
    print(report)


if __name__ == "__main__":
    main()
