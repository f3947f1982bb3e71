"""Speed of a MonteCLoRA SVI step against PEFT's LoRA, PEFT's MonteCLoRA variant, a plain-PyTorch
LoRA and the same MonteCLoRA math without Pyro, plus the predictive's cost in S and the step's cost
in N, r and the number of adapted layers. ``make bench`` runs it on MiniLM and on a tiny Llama.

Every step is forward + loss + backward + AdamW on the same batch (MiniLM: 16 sentences x 64
tokens, rank 8, query + value; or a Llama of the same size class with ``--model llama``). The cases
run in ``--steps`` interleaved rounds (every case once per round, in a shuffled order) after
``--warmup``; every number
reported is a ratio to PEFT's LoRA measured in the same rounds: the ratio of the medians, and the
median of the per-round ratios with a 95% bootstrap interval (on a shared 2-core machine a slow
spell touches neighbouring steps alike, so the per-round ratio is the steadier of the two). Peak
CPU memory is measured by ``cpu_memory.py``, one fresh process per case.

    python benchmarks/bench_suite.py [--model minilm|llama] [--steps 60] [--output benchmarks/results/bench]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import time
from pathlib import Path

import pyro
import torch
import torch.nn.functional as F
import transformers
from provenance import provenance, provenance_line
from torch import nn

from pyro_monteclora import EmptyGuide, MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.infer.elbo import MonteCLoRAELBO
from pyro_monteclora.infer.predictive import predict
from pyro_monteclora.storage.atomic import atomic_file, atomic_write_json, atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"minilm": ["query", "value"], "llama": ["q_proj", "v_proj"]}
ALL_LINEAR = {
    "minilm": ["query", "key", "value", "dense"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


def base_model(kind: str):
    if kind == "minilm":
        from pyro_monteclora.data.classification import default_encoder_path

        return transformers.AutoModelForSequenceClassification.from_pretrained(default_encoder_path(), num_labels=2)
    config = transformers.LlamaConfig(
        vocab_size=8000,
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=6,
        num_labels=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return transformers.LlamaForSequenceClassification(config)


def batch(kind: str, size: int = 16, tokens: int = 64):
    generator = torch.Generator().manual_seed(0)
    vocab = 30000 if kind == "minilm" else 8000
    return {
        "input_ids": torch.randint(5, vocab, (size, tokens), generator=generator),
        "attention_mask": torch.ones(size, tokens, dtype=torch.long),
        "labels": torch.randint(0, 2, (size,), generator=generator),
    }


class PlainLoRALinear(nn.Module):
    """The floor: ``W0 x + (alpha / r) B A x`` in plain PyTorch."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.A = nn.Parameter(torch.empty(rank, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scaling = alpha / rank

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scaling


def _freeze_and_inject(network, targets, make):
    for p in network.parameters():
        p.requires_grad_(False)
    for path, module in list(network.named_modules()):
        if path.rsplit(".", 1)[-1] in targets and isinstance(module, nn.Linear):
            parent, _, child = path.rpartition(".")
            setattr(network.get_submodule(parent), child, make(module))
    head = "classifier" if hasattr(network, "classifier") else "score"
    for p in getattr(network, head).parameters():
        p.requires_grad_(True)
    return network


def classifier_step(network, data, extra_loss=None):
    network.train()  # dropout on, as in any training loop (from_pretrained returns eval mode)
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    inputs = {k: v for k, v in data.items() if k != "labels"}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(network(**inputs).logits, data["labels"])
        if extra_loss is not None:
            loss = loss + extra_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return step


def make_case(name: str, kind: str, data: dict, rank: int = 8, components: int = 4, targets=None):
    """A zero-argument function running one training step of case ``name``."""
    targets = targets or TARGETS[kind]
    network = base_model(kind)
    if name == "plain-lora":
        return classifier_step(_freeze_and_inject(network, targets, lambda m: PlainLoRALinear(m, rank, 2 * rank)), data)
    if name in ("peft-lora", "peft-monteclora"):
        from peft import LoraConfig, get_peft_model

        extra = {}
        if name == "peft-monteclora":
            from peft import MontecloraConfig

            extra["monteclora_config"] = MontecloraConfig(num_samples=components, sample_scaler=5e-3)
        head = "classifier" if kind == "minilm" else "score"
        peft_model = get_peft_model(
            network, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, modules_to_save=[head], **extra)
        )
        loss = peft_model.base_model._get_monteclora_loss if name == "peft-monteclora" else None
        return classifier_step(peft_model, data, loss)
    config = MonteCLoRAConfig(
        rank=rank,
        alpha=2 * rank,
        target_modules=targets,
        num_components=components,
        modules_to_save=["classifier" if kind == "minilm" else "score"],
    )
    lora_mode = name == "ours-lora-mode"
    model = MonteCLoRAModel(network, config, adapter_mode="mean" if lora_mode else "sample")
    guide = EmptyGuide(model) if lora_mode else MonteCLoRAGuide(model)
    model.dataset_size = 1000
    if name == "ours-no-pyro":  # the same math as the SVI step, without Pyro's handlers
        return _no_pyro_step(model, guide, data)
    loss_module = MonteCLoRAELBO()(model, guide)
    params = [p for p in loss_module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        value = loss_module(**data) / 1000
        value.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return step


def _no_pyro_step(model, guide, data):
    """Draw every layer's factors as the guide does (all layers in a few batched operations, see
    ``MonteCLoRAGuide.draw_all``), form all perturbations in one batched operation, run the
    network, add the closed-form KL: the SVI step's arithmetic with no trace, plate or replay."""
    from pyro_monteclora.distributions import lora_perturbation
    from pyro_monteclora.nn.sites import factor_site_names

    params = [p for p in model.parameters() if p.requires_grad] + list(guide.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    adapters = list(model.adapters().values())
    names = [factor_site_names(adapter.path, "lora_A") for adapter in adapters]
    inputs = {k: v for k, v in data.items() if k != "labels"}
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        values, _, _ = guide.draw_all()
        stacked = [
            torch.stack([values[site[part]] for site in names]) for part in ("covariance", "mixture_weights", "noise")
        ]
        delta = lora_perturbation(*stacked, model.config.sample_scaler)
        factors = torch.stack([adapter.lora_A_mean for adapter in adapters]) + delta
        for adapter, A in zip(adapters, factors.unbind(0)):
            adapter.hold_factors(A, adapter.lora_B)
        logits = model.network(**inputs).logits
        for adapter in adapters:
            adapter.clear_factors()
        loss = F.cross_entropy(logits, data["labels"]) + guide.kl_divergence() / 1000
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()

    return step


def interleaved(cases: dict, steps: int, warmup: int, seed: int = 0) -> dict:
    """Run the cases' steps in rounds, each case once per round in a fresh random order (so that
    no case always follows the same neighbour); ``{case: [seconds per kept round]}``."""
    times = {name: [] for name in cases}
    order = list(cases)
    generator = random.Random(seed)
    for round_ in range(warmup + steps):
        generator.shuffle(order)
        for name in order:
            started = time.perf_counter()
            cases[name]()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - started)
    return times


def compare(times: dict, floor: str, resamples: int = 2000) -> dict:
    """Each case against ``floor``: the ratio of the medians, and the median of the per-round
    ratios (a case and the floor ran in the same round, seconds apart, so a slow spell of the
    machine touches both) with a 95% percentile-bootstrap interval. The bootstrap takes rounds as
    independent; slow spells longer than a round make neighbouring rounds alike, so read the
    interval as a lower bound on the uncertainty."""
    generator = random.Random(0)
    low, high = round(0.025 * (resamples - 1)), round(0.975 * (resamples - 1))
    summary = {}
    for name, values in times.items():
        ratios = [a / b for a, b in zip(values, times[floor])]
        medians = sorted(statistics.median(generator.choices(ratios, k=len(ratios))) for _ in range(resamples))
        summary[name] = {
            "median_s": statistics.median(values),
            "ratio_of_medians": statistics.median(values) / statistics.median(times[floor]),
            "paired_ratio": statistics.median(ratios),
            "paired_ratio_ci95": [medians[low], medians[high]],
        }
    return summary


def predictive_costs(kind: str, samples=(0, 1, 4, 10), rounds: int = 7) -> dict:
    model = MonteCLoRAModel(base_model(kind), MonteCLoRAConfig(rank=8, target_modules=TARGETS[kind]))
    guide = MonteCLoRAGuide(model)
    data = batch(kind, 64)
    loader = [{k: v for k, v in data.items()}]
    seconds = {s: [] for s in samples}
    predict(model, guide, loader, num_samples=1)  # warm-up
    for _ in range(rounds):
        for s in samples:
            started = time.perf_counter()
            predict(model, guide, loader, num_samples=s)
            seconds[s].append(time.perf_counter() - started)
    medians = {s: statistics.median(v) for s, v in seconds.items()}
    return {
        str(s): {
            "seconds_per_example": medians[s] / 64,
            "ratio_to_S_times_mean": (medians[s] / (s * medians[0])) if s else 1.0,
        }
        for s in samples
    }


def scaling(kind: str, data: dict, steps: int, warmup: int) -> list:
    """The step's cost along each axis. All settings of an axis run interleaved in one run, with the
    LoRA mode of the same settings: each row gives MonteCLoRA against that LoRA mode and against
    the axis's first setting (N = 16 against N = 1 is the flat-in-N target)."""
    all_linear = ALL_LINEAR[kind]
    axes = {
        "N": [(n, dict(components=n), {}) for n in (1, 4, 16)],
        "rank": [(r, dict(rank=r), dict(rank=r)) for r in (4, 8, 32)],
        "layers": [
            ("query,value", dict(targets=TARGETS[kind]), dict(targets=TARGETS[kind])),
            ("all linear", dict(targets=all_linear), dict(targets=all_linear)),
        ],
    }
    rows = []
    for axis, settings in axes.items():
        cases, lora_of = {}, {}
        for value, kwargs, lora_kwargs in settings:
            pyro.clear_param_store()
            cases[f"monteclora {value}"] = make_case("ours-monteclora", kind, data, **kwargs)
            lora_name = f"lora {value}" if lora_kwargs else "lora"
            if lora_name not in cases:
                cases[lora_name] = make_case("ours-lora-mode", kind, data, **lora_kwargs)
            lora_of[value] = lora_name
        times = interleaved(cases, steps, warmup)
        against = {floor: compare(times, floor) for floor in {*lora_of.values(), f"monteclora {settings[0][0]}"}}
        for value, _, _ in settings:
            name = f"monteclora {value}"
            to_lora = against[lora_of[value]][name]
            to_first = against[f"monteclora {settings[0][0]}"][name]
            rows.append(
                {
                    "axis": axis,
                    "value": value,
                    "monteclora_s": to_lora["median_s"],
                    "lora_s": statistics.median(times[lora_of[value]]),
                    "ratio": to_lora["ratio_of_medians"],
                    "paired_ratio": to_lora["paired_ratio"],
                    "paired_ratio_ci95": to_lora["paired_ratio_ci95"],
                    "ratio_to_first": to_first["ratio_of_medians"],
                    "paired_ratio_to_first": to_first["paired_ratio"],
                    "paired_ratio_to_first_ci95": to_first["paired_ratio_ci95"],
                }
            )
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["minilm", "llama"], default="minilm")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--skip-scaling", action="store_true")
    parser.add_argument("--output", default=str(RESULTS / "bench"))
    args = parser.parse_args()
    origin = provenance()
    transformers.logging.set_verbosity_error()
    pyro.set_rng_seed(0)
    data = batch(args.model)
    names = ["peft-lora", "plain-lora", "peft-monteclora", "ours-lora-mode", "ours-monteclora", "ours-no-pyro"]
    cases = {}
    for name in names:
        pyro.clear_param_store()
        cases[name] = make_case(name, args.model, data)
    steps_table = compare(interleaved(cases, args.steps, args.warmup), "peft-lora")
    print(json.dumps(steps_table, indent=1), flush=True)
    report = {
        "model": args.model,
        "batch": [16, 64],
        "rank": 8,
        "targets": TARGETS[args.model],
        "floor": "peft-lora",
        "steps": steps_table,
        "predictive": predictive_costs(args.model),
        "environment": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "pyro": pyro.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(),
            "steps": args.steps,
            "warmup": args.warmup,
        },
        "provenance": origin,
    }
    try:
        import peft

        report["environment"]["peft"] = peft.__version__
    except ImportError:
        pass
    if not args.skip_scaling:
        report["scaling"] = scaling(args.model, data, max(8, args.steps // 2), args.warmup)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output.with_suffix(".json"), report)
    lines = [
        "| step | median s | × PEFT LoRA (ratio of medians) | per-round ratio, median [95% CI] |",
        "|---|---:|---:|---:|",
    ]
    for name, row in steps_table.items():
        low, high = row["paired_ratio_ci95"]
        lines.append(
            f"| {name} | {row['median_s']:.3f} | {row['ratio_of_medians']:.3f} | "
            f"{row['paired_ratio']:.3f} [{low:.3f}, {high:.3f}] |"
        )
    lines += ["", "| S | s per example | ÷ (S × mean-adapter) |", "|---|---:|---:|"]
    lines += [
        f"| {s} | {r['seconds_per_example']:.4f} | {r['ratio_to_S_times_mean']:.2f} |"
        for s, r in report["predictive"].items()
    ]
    if "scaling" in report:
        lines += [
            "",
            "| axis | value | MonteCLoRA / LoRA mode: ratio of medians | per-round [95% CI] "
            "| MonteCLoRA / the axis's first value: ratio of medians | per-round [95% CI] |",
            "|---|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['axis']} | {r['value']} | {r['ratio']:.3f} | {r['paired_ratio']:.3f} "
            f"[{r['paired_ratio_ci95'][0]:.3f}, {r['paired_ratio_ci95'][1]:.3f}] | {r['ratio_to_first']:.3f} | "
            f"{r['paired_ratio_to_first']:.3f} [{r['paired_ratio_to_first_ci95'][0]:.3f}, "
            f"{r['paired_ratio_to_first_ci95'][1]:.3f}] |"
            for r in report["scaling"]
        ]
    table = "\n".join(lines)
    atomic_write_text(
        output.with_suffix(".md"), f"# Benchmark suite ({args.model}, CPU)\n\n{table}\n\n{provenance_line(origin)}\n"
    )
    _plot(steps_table, output.with_suffix(".png"), args.model)
    print(table)


def _plot(steps_table: dict, path: Path, kind: str) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return
    figure = Figure(figsize=(7, 3.2))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    names = list(steps_table)
    ratios = [steps_table[n]["paired_ratio"] for n in names]
    errors = [
        [r - steps_table[n]["paired_ratio_ci95"][0] for n, r in zip(names, ratios)],
        [steps_table[n]["paired_ratio_ci95"][1] - r for n, r in zip(names, ratios)],
    ]
    axis.barh(names, ratios, xerr=errors, color="#4c72b0", ecolor="black", capsize=3)
    axis.axvline(1.0, color="black", lw=0.8)
    axis.axvline(1.05, color="grey", lw=0.8, ls="--")
    axis.invert_yaxis()
    axis.set_xlabel("step time / PEFT LoRA's, per-round median, 95% CI (lower is better; dashed: 1.05)")
    axis.set_title(f"{kind}, batch 16 x 64, r = 8, CPU")
    figure.tight_layout()
    with atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=120, format="png")


if __name__ == "__main__":
    main()
