"""MonteCLoRA trained by the Hugging Face ``Trainer``, on real data, offline.

The packaged pretrained all-MiniLM-L6-v2 encoder and the Rotten Tomatoes sentences (the demo's
split), held as ``datasets.Dataset`` objects and tokenised with ``Dataset.map``; the training loop,
evaluation every epoch, checkpoints, ``load_best_model_at_end`` (on the validation split's predictive
NLL) and logging are ``transformers.Trainer``'s, through
:class:`~pyro_monteclora.training.trainer.MonteCLoRATrainer`. The best checkpoint is then scored on
the test split with the posterior predictive (S adapter draws), and the metrics are written to
``--output``/``metrics.json`` with the commit they were measured at::

    python examples/hf_trainer.py              # 500 sentences x 6 epochs (a few minutes on 2 cores)
    python examples/hf_trainer.py --fast       # a smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from example_support import apply_presets, provenance  # noqa: E402

from pyro_monteclora.storage.atomic import atomic_write_json  # noqa: E402

PRESETS = {
    "default": {"train_samples": 500, "epochs": 6, "num_samples": 10, "eval_samples": 512, "test_samples": None},
    "fast": {"train_samples": 48, "epochs": 1, "num_samples": 2, "eval_samples": 32, "test_samples": 32},
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/hf_trainer")
    parser.add_argument("--fast", action="store_true", help="tiny data and S = 2: a smoke test")
    parser.add_argument("--train-samples", type=int)
    parser.add_argument("--eval-samples", type=int, help="validation sentences scored every epoch")
    parser.add_argument("--test-samples", type=int, help="test sentences scored at the end (default: all)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--num-samples", type=int, help="adapter draws S of the posterior predictive")
    parser.add_argument("--seed", type=int, default=0)
    return apply_presets(parser, parser.parse_args(argv), PRESETS)


def as_dataset(part, count):
    """The ``datasets.Dataset`` of the first ``count`` sentences of a split (all with ``None``):
    the split's own Arrow table, not a copy."""
    return (part.subset(count) if count else part).table


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
    from pyro_monteclora.data.classification import default_encoder_path, load_rotten_tomatoes
    from pyro_monteclora.training.trainer import MonteCLoRATrainer

    splits = load_rotten_tomatoes(seed=0)
    encoder = default_encoder_path()
    tokenizer = AutoTokenizer.from_pretrained(encoder)

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True, max_length=64)

    data = {
        name: as_dataset(splits[name], count).map(tokenize, batched=True, remove_columns=["text"])
        for name, count in (
            ("train", args.train_samples),
            ("validation", args.eval_samples),
            ("test", args.test_samples),
        )
    }
    network = AutoModelForSequenceClassification.from_pretrained(encoder, num_labels=2)
    model = MonteCLoRAModel(
        network, MonteCLoRAConfig(sample_scaler=2e-2, modules_to_save=["classifier"]), adapter_mode="sample"
    )
    guide = MonteCLoRAGuide(model)
    output = Path(args.output)
    training_args = TrainingArguments(
        output_dir=str(output / "trainer"),
        num_train_epochs=args.epochs,
        per_device_train_batch_size=16,
        per_device_eval_batch_size=64,
        learning_rate=3e-3,
        lr_scheduler_type="linear",
        eval_strategy="epoch",
        save_strategy="epoch",
        save_total_limit=1,
        load_best_model_at_end=True,
        metric_for_best_model="nll",
        greater_is_better=False,
        logging_steps=10,
        report_to=[],
        seed=args.seed,
    )
    trainer = MonteCLoRATrainer(
        model,
        guide,
        training_args,
        num_samples=args.num_samples,
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,  # the default collator pads each batch
    )
    trainer.train()
    test = trainer.evaluate(data["test"], metric_key_prefix="test")
    record = {
        "test": test,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "provenance": provenance(),
    }
    atomic_write_json(output / "metrics.json", record)
    print(
        f"test: accuracy {test['test_accuracy']:.4f}, NLL {test['test_nll']:.4f}, ECE {test['test_ece']:.4f} "
        f"(S = {args.num_samples}); wrote {output / 'metrics.json'}"
    )
    return record


if __name__ == "__main__":
    main()
    sys.exit(0)
