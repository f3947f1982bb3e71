"""Generation throughput of SmolLM2-135M-Instruct with posterior sampling: tokens per second for
S = 0 (the mean adapter, LoRA's cost), S draws decoded together in one batched pass
(``stacked_adapters``, the default) and the same S draws decoded one after another, next to the
pretrained model's own ``generate`` without adapters. Interleaved A B C D rounds, medians.

    python benchmarks/generation_speed.py [--rounds 5] [--samples 4] [--prompts 16] [--new-tokens 16]

Every run produces exactly ``--new-tokens`` tokens per sequence (``min_new_tokens``), so tokens/s
compare like with like. Writes ``benchmarks/results/generation_speed.{json,md,png}``.
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
from provenance import provenance, provenance_line
from transformers import AutoModelForCausalLM, AutoTokenizer

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.data.causal_lm import encode_prompt, pad_batch
from pyro_monteclora.data.trivia import load_trivia
from pyro_monteclora.evaluation.generation import generate_answers
from pyro_monteclora.storage.atomic import atomic_file, atomic_write_json, atomic_write_text
from pyro_monteclora.storage.pretrained import default_decoder_path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--output", default=str(RESULTS / "generation_speed"))
    args = parser.parse_args()
    origin = provenance()
    transformers.logging.set_verbosity_error()
    pyro.set_rng_seed(0)
    path = default_decoder_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    network = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    prompts = [r["question"] for r in load_trivia(seed=0)[: args.prompts]]
    fixed = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, batch_size=args.prompts)

    # the pretrained model alone, before adapters are injected: the floor
    batch = pad_batch([encode_prompt(tokenizer, p) for p in prompts], tokenizer.pad_token_id, side="left")

    def plain() -> float:
        started = time.perf_counter()
        with torch.no_grad():
            network.generate(
                **batch,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        return time.perf_counter() - started

    plain_times = [plain() for _ in range(args.rounds + 1)][1:]
    model = MonteCLoRAModel(
        network, MonteCLoRAConfig(rank=8, target_modules=["q_proj", "k_proj", "v_proj"], sample_scaler=0.05)
    )
    guide = MonteCLoRAGuide(model)
    with torch.no_grad():  # a trained-looking B, so every sample runs the full adapter math
        for adapter in model.adapters().values():
            adapter.lora_B.normal_(0, 1e-3)

    def timed(samples: int, per_pass=None):
        def run() -> float:
            started = time.perf_counter()
            generate_answers(model, guide, tokenizer, prompts, samples, samples_per_pass=per_pass, **fixed)
            return time.perf_counter() - started

        return run

    cases = {
        "S=0 (mean adapter)": (timed(0), 1),
        f"S={args.samples}, one batched pass": (timed(args.samples), args.samples),
        f"S={args.samples}, one draw at a time": (timed(args.samples, 1), args.samples),
    }
    times = {name: [] for name in cases}
    for name, (run, _) in cases.items():  # warm-up
        run()
    for _ in range(args.rounds):
        for name, (run, _) in cases.items():
            times[name].append(run())
    rows = {"pretrained generate (no adapters)": {"seconds": statistics.median(plain_times), "sequences": args.prompts}}
    for name, (_, samples) in cases.items():
        rows[name] = {"seconds": statistics.median(times[name]), "sequences": args.prompts * samples}
    for row in rows.values():
        row["tokens_per_second"] = row["sequences"] * args.new_tokens / row["seconds"]
    s0 = rows["S=0 (mean adapter)"]["seconds"]
    batched = rows[f"S={args.samples}, one batched pass"]["seconds"]
    looped = rows[f"S={args.samples}, one draw at a time"]["seconds"]
    ratios = {
        "S=0 / pretrained": s0 / rows["pretrained generate (no adapters)"]["seconds"],
        f"S={args.samples} batched / ({args.samples} x S=0)": batched / (args.samples * s0),
        f"S={args.samples} one at a time / batched": looped / batched,
    }
    environment = {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyro": pyro.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "device": "cpu",
        "prompts": args.prompts,
        "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "rank": 8,
        "targets": "q_proj,k_proj,v_proj (90 adapters)",
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        output.with_suffix(".json"), {"rows": rows, "ratios": ratios, "environment": environment, "provenance": origin}
    )
    lines = ["| case | sequences | median s | tokens/s |", "|---|---:|---:|---:|"]
    lines += [
        f"| {name} | {r['sequences']} | {r['seconds']:.2f} | {r['tokens_per_second']:.0f} |" for name, r in rows.items()
    ]
    lines += ["", "| ratio | value |", "|---|---:|"] + [f"| {k} | {v:.2f} |" for k, v in ratios.items()]
    table = "\n".join(lines)
    atomic_write_text(
        output.with_suffix(".md"),
        f"# Generation throughput, SmolLM2-135M-Instruct\n\n{table}\n\n"
        f"{args.prompts} trivia prompts, {args.new_tokens} new tokens each, median of "
        f"{args.rounds} interleaved rounds; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads of {os.cpu_count()} CPUs.\n\n{provenance_line(origin)}\n",
    )
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(7, 3.2))
        FigureCanvasAgg(figure)
        axis = figure.add_subplot()
        names = list(rows)
        axis.barh(names, [rows[n]["tokens_per_second"] for n in names], color="#4c72b0")
        axis.invert_yaxis()
        axis.set_xlabel("generated tokens per second (higher is better)")
        axis.set_title(f"SmolLM2-135M, {args.prompts} prompts x {args.new_tokens} tokens, CPU")
        figure.tight_layout()
        with atomic_file(output.with_suffix(".png")) as temporary:
            figure.savefig(temporary, dpi=120, format="png")
    except ImportError:
        pass
    print(table)


if __name__ == "__main__":
    main()
