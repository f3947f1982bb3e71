"""HumanEval pass@1/2/4 of SmolLM2-135M-Instruct: the base model, LoRA and MonteCLoRA after
fine-tuning on a code-instruction set that installs offline.

**The training data** is built from the Python standard library on this machine: every top-level
function of the pure-Python modules listed in :data:`MODULES` that has a docstring, at most
:data:`MAX_LINES` lines and no decorator becomes one record in Magicoder-OSS-Instruct's schema
(``problem``: "Write a Python function ``signature`` ..." with the docstring; ``solution``: the
function's source). It is real code written by people, and it is not HumanEval's: HumanEval's 164
problems were hand-written for the benchmark and are not in the standard library; functions whose
name is a HumanEval entry point are dropped all the same (the count is recorded).

Then, one after the other, with the ``pyro-monteclora`` command line:

1. ``train --task-type causal-lm`` with ``--method lora`` and ``--method monteclora`` (same data,
   budget and seed; rank 8 on q/k/v);
2. ``humaneval`` with n = 4 completions per problem for the base model and LoRA (temperature
   sampling of the mean adapter, T = 0.8, top-p 0.95, the paper's baseline) and for MonteCLoRA (4
   posterior draws, each greedy), each completion run in the sandbox;

and writes ``humaneval_smollm2.json`` (pass@k, failure reasons, times, data counts, provenance),
``.md``/``.rst`` tables and ``pass_at_k.png`` into ``--output``::

    python benchmarks/humaneval_smollm2.py               # about 40 minutes on 2 CPU cores
    python benchmarks/humaneval_smollm2.py --limit 8     # a smoke test
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

__all__ = ["build_code_instructions", "main"]

#: pure-Python standard-library modules whose functions make the training set
MODULES = (
    "string",
    "textwrap",
    "statistics",
    "fractions",
    "heapq",
    "bisect",
    "colorsys",
    "calendar",
    "difflib",
    "fnmatch",
    "glob",
    "shlex",
    "base64",
    "quopri",
    "random",
    "ntpath",
    "posixpath",
    "genericpath",
    "html",
    "keyword",
    "operator",
    "copy",
    "functools",
    "itertools",
    "collections",
    "json.encoder",
    "json.decoder",
    "urllib.parse",
    "email.utils",
    "email.quoprimime",
    "email.base64mime",
    "email._parseaddr",
    "http.cookies",
    "csv",
    "configparser",
    "gettext",
    "locale",
    "tokenize",
    "inspect",
    "dis",
    "pprint",
    "reprlib",
    "ipaddress",
    "uuid",
    "datetime",
    "_pydecimal",
    "_strptime",
    "sre_parse",
    "pydoc",
    "platform",
    "sysconfig",
    "shutil",
    "tarfile",
    "zipfile",
    "ftplib",
    "smtplib",
    "mailbox",
    "mimetypes",
    "wave",
    "chunk",
    "plistlib",
)
MAX_LINES = 25


def _functions(module: str):
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return
    source = Path(spec.origin).read_text(encoding="utf-8")
    lines = source.splitlines()
    for node in ast.parse(source).body:
        if not isinstance(node, ast.FunctionDef) or node.decorator_list or node.name.startswith("__"):
            continue
        doc = ast.get_docstring(node)
        length = node.end_lineno - node.lineno + 1
        if not doc or length > MAX_LINES or len(node.body) < 2:
            continue
        yield node, doc, "\n".join(lines[node.lineno - 1 : node.end_lineno])


def build_code_instructions(entry_points: set) -> tuple:
    """``(records, dropped)``: the standard library's functions as ``problem``/``solution`` records,
    and how many were dropped because HumanEval has a function of that name."""
    records, dropped = [], 0
    for module in MODULES:
        for node, doc, code in _functions(module):
            if node.name in entry_points:
                dropped += 1
                continue
            signature = f"{node.name}({ast.unparse(node.args)})"
            problem = f"Write a Python function `{signature}`.\n\n{doc.strip()}"
            records.append({"problem": problem, "solution": code, "module": module})
    return records, dropped


def _cli(argv) -> None:
    from pyro_monteclora.cli import main as cli

    print("$ pyro-monteclora " + " ".join(map(str, argv)), flush=True)
    status = cli([str(part) for part in argv])
    if status != 0:
        raise SystemExit(status)


def _table(record: dict) -> str:
    ks = list(next(iter(record["runs"].values()))["pass_at_k"])
    lines = [
        "| model | sampling | " + " | ".join(ks) + " | failures (most common) | train s | generate s |",
        "|---|---|" + "---:|" * len(ks) + "---|---:|---:|",
    ]
    for label, run in record["runs"].items():
        reasons = ", ".join(f"{name} {count}" for name, count in list(run["reasons"].items())[:3])
        train = record["train_seconds"].get(label)
        lines.append(
            f"| {label} | {run['settings']['sampling']} | "
            + " | ".join(f"{run['pass_at_k'][k]:.3f}" for k in ks)
            + f" | {reasons} | {'' if train is None else f'{train:.0f}'} | {run['seconds']['generation']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(HERE / "results" / "humaneval"))
    parser.add_argument("--runs", default="runs/humaneval_smollm2")
    parser.add_argument("--train-samples", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--limit", type=int, default=None, help="the first N HumanEval problems (default: all 164)")
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from provenance import provenance, provenance_line
    from tables import list_table

    from pyro_monteclora.evaluation.humaneval import load_code_problems
    from pyro_monteclora.evaluation.plots import plot_pass_at_k
    from pyro_monteclora.storage.atomic import atomic_write_json, atomic_write_text
    from pyro_monteclora.storage.pretrained import default_decoder_path

    measured = provenance(REPO)
    runs, output = Path(args.runs), Path(args.output)
    runs.mkdir(parents=True, exist_ok=True)
    entry_points = {problem.entry_point for problem in load_code_problems()}
    records, dropped = build_code_instructions(entry_points)
    import random

    random.Random(args.seed).shuffle(records)
    train = records[: args.train_samples]
    data = runs / "code_instructions.jsonl"
    atomic_write_text(data, "".join(json.dumps(row) + "\n" for row in train))
    base = str(default_decoder_path())
    train_seconds = {}
    for method in ("lora", "monteclora"):
        started = time.perf_counter()
        _cli(
            ["train", "--task-type", "causal-lm", "--train-file", data, "--method", method, "--rank", 8]
            + ["--target-modules", "q_proj,k_proj,v_proj", "--epochs", args.epochs, "--learning-rate", 1e-3]
            + ["--sample-scaler", 5e-2, "--batch-size", 8, "--max-length", 320, "--seed", args.seed]
            + ["--output", runs / method, "--overwrite"]
        )
        train_seconds["LoRA" if method == "lora" else "MonteCLoRA"] = time.perf_counter() - started
    common = ["--num-samples", args.num_samples, "--k", "1,2,4", "--max-new-tokens", args.max_new_tokens]
    common += ["--seed", args.seed, "--batch-size", 4, "--overwrite"]
    if args.limit:
        common += ["--limit", args.limit]
    results = {}
    for label, source in (
        ("SmolLM2-135M-Instruct", ["--model", base, "--sampling", "temperature"]),
        ("LoRA", ["--checkpoint", runs / "lora", "--sampling", "temperature"]),
        ("MonteCLoRA", ["--checkpoint", runs / "monteclora", "--sampling", "posterior"]),
    ):
        folder = runs / f"he_{label.split('-')[0].lower()}"
        _cli(["humaneval", *source, *common, "--output", folder])
        results[label] = json.loads((folder / "humaneval.json").read_text())
        rows = [json.loads(line) for line in (folder / "problems.jsonl").read_text().splitlines()]
        results[label]["problems"] = rows
    record = {
        "runs": {label: {k: v for k, v in run.items() if k != "problems"} for label, run in results.items()},
        "train_seconds": train_seconds,
        "data": {
            "records_built": len(records),
            "train_samples": len(train),
            "dropped_as_humaneval_names": dropped,
            "modules": list(MODULES),
        },
        "provenance": measured,
    }
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(output / "humaneval_smollm2.json", record)
    table = _table(record)
    atomic_write_text(output / "humaneval_smollm2.md", table + "\n" + provenance_line(measured) + "\n")
    caption = f"HumanEval ({record['runs']['LoRA']['num_problems']} problems), n = {args.num_samples}"
    atomic_write_text(
        output / "humaneval_smollm2.rst",
        list_table(caption, table) + "\n" + provenance_line(measured).replace("`", "``") + "\n",
    )
    plot_pass_at_k(results, output / "pass_at_k.png", title="HumanEval, SmolLM2-135M-Instruct")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
