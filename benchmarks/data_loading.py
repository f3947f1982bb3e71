"""The data layer on ``datasets`` against the hand-written readers it replaced, side by side in one
run: load + tokenise time and peak memory, and the peak memory of training and evaluating on a
million rows.

* **load**: for each file (Rotten Tomatoes' 12,808 sentences written as a csv; a generated csv
  of ``--rows`` rows), each path runs in a fresh process: ``load_classification_file``, then one
  pass of ``classification_loader`` over every batch (the old path tokenised inside that pass; the
  new one tokenises with ``Dataset.map`` first and only pads in it). The new path runs twice: with
  an empty ``datasets`` cache (``new-cold``), then again (``new-warm``: the Arrow table and the
  tokens come back from the cache).
* **train**: ``pyro-monteclora train`` (one epoch, a 2-layer 32-wide random BERT with MiniLM's
  tokenizer, so that a million rows take minutes) then ``evaluate`` on the same file, each a fresh
  process, at 12,808 rows and at ``--rows`` rows, both paths: flat memory means the peak does not
  grow with the rows.

Memory is the process's peak resident set (``wait4``'s ``ru_maxrss``), the peak of its anonymous
memory (``RssAnon``, sampled every 20 ms: the resident set less the pages of memory-mapped files,
which the kernel can drop and read again), and, for **load**, both above what the process held
after importing the libraries and loading the tokenizer (``data_peak``), so that the libraries'
own footprint cancels out. Every process runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (as
``cpu_memory.py`` does), so that freed memory goes back to the system and a peak is live data.

The old path is the package at ``--old-ref`` (default ``f64e2ac``, the last commit with the
hand-written readers), exported with ``git archive``; each process reports
which ``pyro_monteclora`` it imported.

    python benchmarks/data_loading.py [--rows 1000000] [--output benchmarks/results/data_loading]

It writes ``data_loading.json`` (every measurement, with the provenance of both paths),
``data_loading.md`` and ``data_loading.rst`` (the tables; ``--tables-only`` rewrites them from the
JSON).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OLD_REF = "f64e2ac"


def _status(pid="self", fields=("VmHWM", "RssAnon")) -> dict:
    """``fields`` of ``/proc/<pid>/status`` in MiB (``VmHWM``: peak resident set; ``RssAnon``:
    resident memory not backed by a file); empty once the process has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in fields:
            values[key] = int(rest.split()[0]) / 1024.0
    return values


def _worker_load(path: str, batch_size: int, max_length: int) -> dict:
    """One path's load + tokenise, run inside a fresh process (``--worker``)."""
    import datasets  # noqa: F401  (both paths start with the libraries loaded: only data is measured)
    import pyarrow  # noqa: F401
    from transformers import AutoTokenizer

    import pyro_monteclora
    from pyro_monteclora.data.classification import classification_loader, default_encoder_path
    from pyro_monteclora.data.records import load_classification_file

    tokenizer = AutoTokenizer.from_pretrained(default_encoder_path())
    baseline = _status(fields=("VmRSS", "RssAnon"))
    start = time.perf_counter()
    data = load_classification_file(path, ["text"], "label")
    loaded = time.perf_counter()
    tokens = 0
    for batch in classification_loader(data, tokenizer, batch_size=batch_size, max_length=max_length):
        tokens += int(batch["attention_mask"].sum())
    done = time.perf_counter()
    return {
        "package": str(Path(pyro_monteclora.__file__).parent),
        "rows": len(data),
        "tokens": tokens,
        "baseline_rss_mib": baseline["VmRSS"],
        "baseline_anonymous_mib": baseline["RssAnon"],
        "load_seconds": loaded - start,
        "tokenise_seconds": done - loaded,
        "total_seconds": done - start,
    }


def _peak_of(command, env: dict, cwd: Path) -> dict:
    """Run ``command``: its wall time, its peak resident set (``wait4``'s ``ru_maxrss``), the peak
    of its anonymous memory (``RssAnon`` read every 20 ms: the resident set less the pages of
    memory-mapped files, which the kernel may drop and read again) and the JSON line it printed
    last. ``cwd`` is a folder without a ``pyro_monteclora`` package (``python -m`` puts the working
    directory first on the path: run from a checkout, it would shadow the code under test)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        anonymous = 0.0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            anonymous = max(anonymous, _status(process.pid).get("RssAnon", 0.0))
            time.sleep(0.02)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed ({process.returncode}):\n{stderr[-3000:]}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return {
        "seconds": seconds,
        "peak_rss_mib": usage.ru_maxrss / 1024.0,
        "peak_anonymous_mib": anonymous,
        "report": json.loads(lines[-1]) if lines else None,
    }


def _write_files(folder: Path, rows: int) -> dict:
    """Rotten Tomatoes as a csv, and a csv of ``rows`` rows made of its sentences, each numbered so
    that no two rows are alike."""
    sys.path.insert(0, str(REPO))
    from pyro_monteclora.data.classification import load_rotten_tomatoes

    splits = load_rotten_tomatoes()
    sentences = [
        (text, split.label_names[label]) for split in splits.values() for text, label in zip(split.texts, split.labels)
    ]
    files = {}
    for name, count in (("rotten_tomatoes", len(sentences)), (f"generated_{rows}", rows)):
        path = folder / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for i in range(count):
                text, label = sentences[i % len(sentences)]
                writer.writerow([text if count == len(sentences) else f"{text} (#{i})", label])
        files[name] = {"path": str(path), "rows": count, "bytes": path.stat().st_size}
    return files


def _tiny_model(folder: Path) -> Path:
    """A 2-layer, 32-wide random BERT classifier with MiniLM's tokenizer."""
    import torch
    import transformers

    from pyro_monteclora.data.classification import default_encoder_path

    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_encoder_path())
    config = transformers.BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=2,
    )
    path = folder / "tiny-bert"
    transformers.BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _environment(code: Path, cache: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code), HF_DATASETS_CACHE=str(cache), HF_HUB_OFFLINE="1")
    env["HF_DATASETS_OFFLINE"] = "1"
    env["TOKENIZERS_PARALLELISM"] = "false"
    # every block above 64 KiB its own mmap, returned when freed: the resident set follows the live
    # data instead of glibc's retained heap (without it, evaluating 60k rows held ~290 MiB more than
    # 12.8k rows on either path; with it, 5 MiB more)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return env


def _load_cases(files: dict, codes: dict, folder: Path, args) -> list:
    results = []
    for name, spec in files.items():
        caches = {path: folder / f"cache-{name}-{path}" for path in codes}
        for path, label in (("old", "old"), ("new", "new-cold"), ("new", "new-warm")):
            command = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--worker",
                spec["path"],
                "--batch-size",
                str(args.batch_size),
                "--max-length",
                str(args.max_length),
            ]
            print(f"load: {name} {label} ...", file=sys.stderr, flush=True)
            run = _peak_of(command, _environment(codes[path], caches[path]), folder)
            report = run.pop("report")
            results.append(
                {
                    "file": name,
                    "rows": spec["rows"],
                    "path": label,
                    **report,
                    "peak_rss_mib": run["peak_rss_mib"],
                    "peak_anonymous_mib": run["peak_anonymous_mib"],
                    "data_peak_mib": run["peak_rss_mib"] - report["baseline_rss_mib"],
                    "data_peak_anonymous_mib": run["peak_anonymous_mib"] - report["baseline_anonymous_mib"],
                }
            )
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def _imported_package(env: dict, cwd: Path) -> str:
    """The folder of the ``pyro_monteclora`` that ``python -m pyro_monteclora`` imports with ``env``
    in ``cwd``."""
    probe = "import pathlib, pyro_monteclora; print(pathlib.Path(pyro_monteclora.__file__).parent)"
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _train_cases(files: dict, codes: dict, folder: Path, model: Path, args) -> list:
    results = []
    for name, spec in files.items():
        for path in codes:
            run = folder / f"run-{name}-{path}"
            env = _environment(codes[path], folder / f"cache-train-{name}-{path}")
            package = _imported_package(env, folder)
            if not package.startswith(str(codes[path])):
                raise RuntimeError(f"the {path} path imported pyro_monteclora from {package}, not {codes[path]}")
            cli = [sys.executable, "-m", "pyro_monteclora"]
            steps = {
                "train": cli
                + ["train", "--model", str(model), "--train-file", spec["path"], "--no-validation", "--epochs", "1"]
                + ["--batch-size", str(args.train_batch_size), "--max-length", str(args.max_length)]
                + ["--learning-rate", "1e-3", "--output", str(run)],
                "evaluate": cli
                + ["evaluate", "--checkpoint", str(run), "--test-file", spec["path"], "--num-samples", "2"]
                + ["--batch-size", str(args.train_batch_size), "--output", str(run / "evaluation")],
            }
            for step, command in steps.items():
                print(f"train: {name} {path} {step} ...", file=sys.stderr, flush=True)
                measured = _peak_of(command, env, folder)
                results.append(
                    {
                        "file": name,
                        "rows": spec["rows"],
                        "path": path,
                        "package": package,
                        "step": step,
                        "seconds": measured["seconds"],
                        "peak_rss_mib": measured["peak_rss_mib"],
                        "peak_anonymous_mib": measured["peak_anonymous_mib"],
                    }
                )
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return results


def load_table(record: dict) -> str:
    """The load part as a markdown table: each path's times and memory, time as a ratio to the old
    path's on the same file."""
    old = {row["file"]: row for row in record["load"] if row["path"] == "old"}
    lines = [
        "| file | rows | path | load s | tokenise s | total s | × old | data peak MiB | data peak anon MiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in record["load"]:
        ratio = row["total_seconds"] / old[row["file"]]["total_seconds"]
        lines.append(
            f"| {row['file']} | {row['rows']:,} | {row['path']} | {row['load_seconds']:.1f} | "
            f"{row['tokenise_seconds']:.1f} | {row['total_seconds']:.1f} | {ratio:.2f} | "
            f"{row['data_peak_mib']:.0f} | {row['data_peak_anonymous_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def train_table(record: dict) -> str:
    """The train part as a markdown table: each command's time and peak memory, and the peak as a
    ratio to the same command's on the smallest file (1.00: flat memory)."""
    smallest = min(row["rows"] for row in record["train"])
    base = {(r["path"], r["step"]): r for r in record["train"] if r["rows"] == smallest}
    lines = [
        "| file | rows | path | command | seconds | peak RSS MiB | peak anon MiB | anon × smallest |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for row in record["train"]:
        ratio = row["peak_anonymous_mib"] / base[(row["path"], row["step"])]["peak_anonymous_mib"]
        lines.append(
            f"| {row['file']} | {row['rows']:,} | {row['path']} | {row['step']} | {row['seconds']:.0f} | "
            f"{row['peak_rss_mib']:.0f} | {row['peak_anonymous_mib']:.0f} | {ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def write_tables(record: dict, output: Path) -> str:
    """Write ``data_loading.md`` and ``data_loading.rst`` (the docs include it) from ``record``."""
    sys.path.insert(0, str(HERE))
    from provenance import provenance_line
    from tables import list_table

    from pyro_monteclora.storage.atomic import atomic_write_text

    line = provenance_line(record["provenance"]) + f"; old path: {record['old_commit'][:7]}"
    markdown = line + "\n\n" + load_table(record)
    rst = (
        line
        + "\n\n"
        + list_table("Load + tokenise: today's data layer against the hand-written readers", load_table(record))
    )
    if record["train"]:
        markdown += "\n" + train_table(record)
        rst += "\n" + list_table("Train (1 epoch) and evaluate (S = 2) on the file, peak memory", train_table(record))
    atomic_write_text(output / "data_loading.md", markdown)
    atomic_write_text(output / "data_loading.rst", rst)
    return markdown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the generated file")
    parser.add_argument("--batch-size", type=int, default=64, help="loader batch size of the load part")
    parser.add_argument("--train-batch-size", type=int, default=512, help="batch size of train and evaluate")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--old-ref", default=OLD_REF, help="the commit of the hand-written readers")
    parser.add_argument("--skip-train", action="store_true", help="only the load part")
    parser.add_argument("--output", default=str(HERE / "results" / "data_loading"))
    parser.add_argument("--tables-only", action="store_true", help="rewrite the tables from data_loading.json")
    args = parser.parse_args(argv)
    if args.tables_only:
        sys.path.insert(0, str(REPO))
        output = Path(args.output)
        print(write_tables(json.loads((output / "data_loading.json").read_text()), output))
        return 0
    if args.worker:
        print(json.dumps(_worker_load(args.worker, args.batch_size, args.max_length)))
        return 0
    if args.rows < 1:
        parser.error(f"--rows must be an integer >= 1, got {args.rows}")
    sys.path.insert(0, str(HERE))
    from provenance import provenance

    record = {"provenance": provenance(), "old_ref": args.old_ref, "settings": vars(args)}
    with tempfile.TemporaryDirectory(prefix="data-loading-") as scratch:
        folder = Path(scratch)
        old = folder / "old"
        old.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.old_ref, "pyro_monteclora"], check=True, capture_output=True
        )
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        record["old_commit"] = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", args.old_ref], check=True, capture_output=True, text=True
        ).stdout.strip()
        codes = {"old": old, "new": REPO}
        files = _write_files(folder, args.rows)
        record["files"] = {name: {k: v for k, v in spec.items() if k != "path"} for name, spec in files.items()}
        record["load"] = _load_cases(files, codes, folder, args)
        record["train"] = [] if args.skip_train else _train_cases(files, codes, folder, _tiny_model(folder), args)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    from pyro_monteclora.storage.atomic import atomic_write_json

    atomic_write_json(output / "data_loading.json", record)
    print(write_tables(record, output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
