"""CUDA check of the core: SVI and the predictive on a GPU, fp32 and bf16 autocast, step-time ratios.

Runs on a MiniLM-shaped BERT (the packaged config when installed, random weights: the GPU machine
cannot fetch the pretrained ones) and a synthetic learnable task, so it needs no network or data.

    python benchmarks/cuda_check.py --json cuda_check.json
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import torch
import transformers
from provenance import provenance

from pyro_monteclora import EmptyGuide, MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel, fit, predict
from pyro_monteclora.training.svi import ELBO_KINDS

LOSS = "monteclora"  # what fit() uses by default
MINILM = dict(
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
    type_vocab_size=2,
)


def minilm_shaped(num_labels=2):
    try:
        from pyro_monteclora.data.classification import default_encoder_path

        config = transformers.AutoConfig.from_pretrained(default_encoder_path(), num_labels=num_labels)
    except (FileNotFoundError, OSError):
        config = transformers.BertConfig(num_labels=num_labels, **MINILM)
    return transformers.BertForSequenceClassification(config)


#: step-time modes: MonteCLoRA with per-layer sites (the default), with the stacked site layout, and
#: the LoRA mode of the same code
MODES = ("monteclora", "monteclora-stacked", "lora")


def make(mode, device):
    layout = "stacked" if mode == "monteclora-stacked" else "per-layer"
    sampled = mode.startswith("monteclora")
    model = MonteCLoRAModel(
        minilm_shaped().to(device),
        MonteCLoRAConfig(rank=8, target_modules=["query", "value"], modules_to_save=["classifier"], site_layout=layout),
        adapter_mode="sample" if sampled else "mean",
    )
    return model, MonteCLoRAGuide(model) if sampled else EmptyGuide(model)


def step_runner(mode, device, dtype, batch_size, tokens):
    """One optimiser step of ``mode`` on a fixed random batch, returning its wall time."""
    batch = {
        "input_ids": torch.randint(1000, 20000, (batch_size, tokens), device=device),
        "attention_mask": torch.ones(batch_size, tokens, dtype=torch.long, device=device),
        "labels": torch.randint(0, 2, (batch_size,), device=device),
    }
    model, guide = make(mode, device)
    model.dataset_size = 10_000
    loss_module = ELBO_KINDS[LOSS]()(model, guide)
    params = [p for p in loss_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)

    def run():
        sync(device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            value = loss_module(**batch) / 10_000
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        sync(device)
        return time.perf_counter() - started

    return run


def step_times(device, dtype, batch_size, tokens, steps=20, warmup=5):
    runners = {mode: step_runner(mode, device, dtype, batch_size, tokens) for mode in MODES}
    syncs = {}
    if device.type == "cuda":
        import warnings

        for mode, run in runners.items():
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                run()
                torch.cuda.set_sync_debug_mode("default")
            syncs[mode] = sum("synchroniz" in str(w.message) for w in caught)
    times = {mode: [] for mode in runners}
    for i in range(warmup + steps):
        for mode, run in runners.items():
            elapsed = run()
            if i >= warmup:
                times[mode].append(elapsed)
    peaks = {}
    for mode, run in runners.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            run()
            peaks[mode] = torch.cuda.max_memory_allocated() / 2**20
    med = {mode: statistics.median(v) for mode, v in times.items()}
    return {
        "batch": [batch_size, tokens],
        "dtype": str(dtype),
        "median_ms": {k: v * 1e3 for k, v in med.items()},
        "tokens_per_second": {k: batch_size * tokens / v for k, v in med.items()},
        "ratio": med["monteclora"] / med["lora"],
        "ratio_stacked": med["monteclora-stacked"] / med["lora"],
        "peak_MiB_incl_both_models": peaks,
        "host_syncs_per_step": syncs,
    }


def predictive_ratio(device, dtype, steps=20, batch_size=16, tokens=64, num_samples=10):
    """Median time of ``predict`` with S = 10 (one batched pass of S x b rows) over one mean-adapter
    forward of the same batch, for both site layouts."""
    batch = {
        "input_ids": torch.randint(1000, 20000, (batch_size, tokens), device=device),
        "attention_mask": torch.ones(batch_size, tokens, dtype=torch.long, device=device),
    }
    row = {"batch": [batch_size, tokens], "dtype": str(dtype), "num_samples": num_samples}
    for mode in ("monteclora", "monteclora-stacked"):
        model, guide = make(mode, device)
        model.eval()

        def timed(function):
            for _ in range(3):
                function()
            times = []
            for _ in range(steps):
                sync(device)
                started = time.perf_counter()
                function()
                sync(device)
                times.append(time.perf_counter() - started)
            return statistics.median(times)

        with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            mean = timed(lambda: predict(model, guide, [batch], num_samples=0))
            sampled = timed(
                lambda: predict(model, guide, [batch], num_samples=num_samples, samples_per_pass=num_samples)
            )
        row[mode] = {"mean_ms": mean * 1e3, "sampled_ms": sampled * 1e3, "ratio": sampled / mean}
    return row


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def learnable_task(device, size=512, length=16):
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (size,), generator=g)
    ids = torch.where(labels == 1, 1000, 3000)[:, None] + torch.randint(0, 1000, (size, length), generator=g)
    batches = [
        {"input_ids": ids[i : i + 32], "attention_mask": torch.ones_like(ids[i : i + 32]), "labels": labels[i : i + 32]}
        for i in range(0, size, 32)
    ]
    return batches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--device", default="cuda", help="cuda (the point) or cpu (a dry run)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--profile", action="store_true", help="cProfile 10 MonteCLoRA steps (host side)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("cuda_check.py needs a CUDA device")
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    device = torch.device(args.device)
    pyro.set_rng_seed(0)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    report = {
        "device": name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pyro": pyro.__version__,
        "provenance": provenance(),
    }
    # 1. SVI learns on the GPU, fp32 and under bf16 autocast; the predictive runs there.
    for dtype in (torch.float32, torch.bfloat16):
        model, guide = make("monteclora", device)
        batches = learnable_task(device)[: 4 if device.type == "cpu" else None]
        model.dataset_size = 32 * len(batches)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            result = fit(model, guide, batches, epochs=3, learning_rate=3e-3, seed=0, progress=False)
            output = predict(model, guide, batches[:4], num_samples=4)
        accuracy = (output.probs.argmax(-1) == output.labels).float().mean().item()
        devices = {str(p.device) for p in list(model.parameters()) + list(guide.parameters())}
        report[f"fit_{dtype}"] = {
            "first_loss": result.steps[0]["loss"],
            "last_loss": result.steps[-1]["loss"],
            "train_accuracy_S4": accuracy,
            "mean_mutual_information": output.mutual_information.mean().item(),
            "parameter_devices": sorted(devices),
            "adapter_dtype": str(next(iter(model.adapters().values())).lora_A_mean.dtype),
        }
        print(dtype, report[f"fit_{dtype}"], flush=True)
    # 2. Step time and memory, MonteCLoRA against the LoRA mode of the same code, with Pyro's
    #    validation off as fit() runs its steps.
    pyro.enable_validation(False)
    report["step_time"] = [
        step_times(device, dtype, b, t, steps=args.steps)
        for dtype in (torch.float32, torch.bfloat16)
        for b, t in ((16, 64), (32, 128), (64, 256))
    ]
    for row in report["step_time"]:
        print(row, flush=True)
    # 3. The S = 10 posterior predictive in one batched pass against one mean-adapter forward, batch 16
    report["predictive"] = [
        predictive_ratio(device, dtype, steps=args.steps) for dtype in (torch.float32, torch.bfloat16)
    ]
    for row in report["predictive"]:
        print(row, flush=True)
    if args.profile:
        import cProfile
        import io
        import pstats

        runner = step_runner("monteclora", device, torch.bfloat16, 32, 128)
        for _ in range(5):
            runner()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(10):
            runner()
        profiler.disable()
        stream = io.StringIO()
        pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(25)
        report["profile_monteclora_bf16_32x128_10_steps"] = stream.getvalue()
        print(stream.getvalue(), flush=True)
    if args.json:
        from pyro_monteclora.storage.atomic import atomic_write_json

        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
