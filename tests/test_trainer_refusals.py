"""What MonteCLoRATrainer refuses before any work (naming the field and the allowed values), and
that its checkpoints are never pickled nor unpickled."""

import json

import pytest
import torch
from conftest import tiny_bert_classifier, tiny_llama
from test_train import TokenSetTask
from test_trainer import arguments, make_classifier, stack

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.training.trainer import MonteCLoRATrainer


def test_bad_input_is_refused_before_any_work(tmp_path):
    with pytest.raises(TypeError, match="MonteCLoRAModel"):
        MonteCLoRATrainer(tiny_bert_classifier(), None, arguments(tmp_path))
    model, guide = make_classifier()
    with pytest.raises(ValueError, match="num_samples"):
        MonteCLoRATrainer(model, guide, arguments(tmp_path), num_samples=-1)
    with pytest.raises(ValueError, match="needs its guide"):
        MonteCLoRATrainer(model, None, arguments(tmp_path))
    stream = (item for item in TokenSetTask(4))  # no length
    with pytest.raises(ValueError, match="dataset_size=D"):
        MonteCLoRATrainer(model, guide, arguments(tmp_path), train_dataset=stream)
    with pytest.raises(ValueError, match="dataset_size must be"):
        MonteCLoRATrainer(model, guide, arguments(tmp_path), dataset_size=0)
    with pytest.raises(ValueError, match="fsdp must be off"):
        MonteCLoRATrainer(model, guide, arguments(tmp_path, fsdp="full_shard"))
    with pytest.raises(ValueError, match="torch_compile must be off"):
        MonteCLoRATrainer(model, guide, arguments(tmp_path, torch_compile=True))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "changes, extra, message",
    [
        (
            dict(save_strategy="steps", optim="sgd"),
            {},
            r"optim must be one of \['adamw_torch', 'adamw_torch_fused'\].*'sgd'",
        ),
        (dict(save_strategy="epoch", optim="adafactor"), {}, r"optim must be one of .*'adafactor'"),
        (
            dict(save_strategy="epoch", eval_strategy="epoch", lr_scheduler_type="reduce_lr_on_plateau"),
            {},
            r"lr_scheduler_type must not be 'reduce_lr_on_plateau'",
        ),
        (dict(label_smoothing_factor=0.1), {}, r"label_smoothing_factor must be 0.*0\.1"),
        (
            {},
            dict(compute_loss_func=lambda outputs, labels, num_items_in_batch=None: 0),
            r"compute_loss_func must be None",
        ),
    ],
)
def test_arguments_whose_checkpoints_cannot_resume_are_refused_up_front(tmp_path, changes, extra, message):
    """A checkpoint whose optimiser or schedule training_state.json cannot hold would be found out only
    when resuming; another loss would silently replace the ELBO."""
    model, guide = make_classifier()
    data = TokenSetTask(16, seed=0)
    args = arguments(tmp_path, **changes)  # TrainingArguments' own checks pass
    with pytest.raises(ValueError, match=message):
        MonteCLoRATrainer(model, guide, args, train_dataset=data, eval_dataset=data, data_collator=stack, **extra)
    assert not any(tmp_path.iterdir())
    # without optimiser state in the checkpoints, SGD is fine
    if changes.get("optim") == "sgd":
        MonteCLoRATrainer(model, guide, arguments(tmp_path, optim="sgd", save_strategy="steps", save_only_model=True))


def test_the_fp16_grad_scaler_is_checkpointed_as_json_and_never_unpickled(tmp_path):
    """Trainer pickles the scaler into scaler.pt and torch.loads it back; here it is JSON both ways."""
    model, guide = make_classifier()
    trainer = MonteCLoRATrainer(model, guide, arguments(tmp_path), train_dataset=TokenSetTask(16), data_collator=stack)
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=512.0, growth_interval=7)
    checkpoint = tmp_path / "checkpoint-1"
    checkpoint.mkdir()
    trainer._save_scaler(str(checkpoint))
    assert sorted(p.name for p in checkpoint.iterdir()) == ["grad_scaler.json"]
    assert json.loads((checkpoint / "grad_scaler.json").read_text())["scale"] == 512.0

    (checkpoint / "scaler.pt").write_bytes(b"not a pickle: loading it would raise")
    trainer.accelerator.scaler = fresh = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    trainer._load_scaler(str(checkpoint))
    assert fresh.get_scale() == 512.0 and fresh.get_growth_interval() == 7
    (checkpoint / "grad_scaler.json").write_text(json.dumps({"scale": -1.0}))
    with pytest.raises(ValueError, match=r"grad_scaler.json: scale must be a finite number > 0, got -1"):
        trainer._load_scaler(str(checkpoint))


def test_a_causal_lm_evaluated_without_labels_is_told_what_is_missing(tmp_path):
    torch.manual_seed(0)
    model = MonteCLoRAModel(tiny_llama(), MonteCLoRAConfig(rank=2, target_modules=["q_proj"]))
    ids = torch.randint(4, 60, (4, 6))
    items = [{"input_ids": row, "attention_mask": torch.ones_like(row)} for row in ids]
    trainer = MonteCLoRATrainer(model, MonteCLoRAGuide(model), arguments(tmp_path), data_collator=stack)
    with pytest.raises(ValueError, match="no 'labels'.*its keys are \\['attention_mask', 'input_ids'\\]"):
        trainer.predict(items)


def test_importing_the_package_does_not_import_the_trainer():
    """transformers.Trainer and accelerate cost seconds to import: only the trainer's users pay them."""
    import subprocess
    import sys

    code = "import sys, pyro_monteclora, pyro_monteclora.training; print('transformers.trainer' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr[-2000:]
    from pyro_monteclora.training import MonteCLoRATrainer as lazy

    assert lazy is MonteCLoRATrainer
