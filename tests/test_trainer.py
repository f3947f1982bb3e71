"""MonteCLoRATrainer: the Hugging Face Trainer reaches fit()'s parameters, resumes exactly, accumulates
and distributes like fit, and evaluates through the posterior predictive (what it refuses:
test_trainer_refusals.py)."""

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_bert_classifier, tiny_llama
from test_train import TokenSetTask
from torch.utils.data import DataLoader, SequentialSampler
from transformers import TrainerCallback, TrainingArguments

from pyro_monteclora import MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.storage.checkpoint import load_pretrained, read_trained_tensors
from pyro_monteclora.training.svi import fit
from pyro_monteclora.training.trainer import (
    ELBOObjective,
    MonteCLoRATrainer,
    language_model_posterior_metrics,
    posterior_metrics,
)


class SequentialTrainer(MonteCLoRATrainer):
    """The training batches in dataset order (fit's loader below reads them in the same order)."""

    def _get_train_sampler(self, train_dataset=None):
        return SequentialSampler(train_dataset if train_dataset is not None else self.train_dataset)


class StopAt(TrainerCallback):
    """Stop training after optimiser step ``step`` (its checkpoint is written first)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
        return control


def stack(items):
    return {key: torch.stack([torch.as_tensor(item[key]) for item in items]) for key in items[0]}


def make_classifier(seed=0, random_B=False):
    torch.manual_seed(seed)
    model = MonteCLoRAModel(
        tiny_bert_classifier(seed=seed),
        MonteCLoRAConfig(rank=4, modules_to_save=["classifier"], sample_scaler=0.05),
        adapter_mode="sample",
    )
    if random_B:  # B starts at 0, which hides A's draws from the output: give it a trained-like value
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("lora_B"):
                    parameter.normal_(0.0, 1.0)
    return model, MonteCLoRAGuide(model)


def arguments(tmp_path, **changes):
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=16,
        learning_rate=5e-3,
        num_train_epochs=2,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        seed=3,
        report_to=[],
        save_strategy="no",
        logging_steps=4,
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    settings.update(changes)
    return TrainingArguments(**settings)


def trained_tensors(model, guide):
    from pyro_monteclora.storage.checkpoint import trained_tensors as tensors

    return {name: t.detach().clone() for name, t in tensors(model, guide).items()}


def fitted(model, guide, items, batch_size, epochs, learning_rate, **options):
    """``fit`` over ``items`` in their order (the batches SequentialTrainer sees): its result and
    the trained tensors."""
    loader = DataLoader(items, batch_size=batch_size, shuffle=False, collate_fn=stack)
    result = fit(model, guide, loader, epochs=epochs, learning_rate=learning_rate, seed=3, progress=False, **options)
    return result, trained_tensors(model, guide)


def test_trainer_and_fit_reach_the_same_parameters(tmp_path):
    data = TokenSetTask(64, seed=0)
    model, guide = make_classifier()
    start = trained_tensors(model, guide)
    result, by_fit = fitted(model, guide, data, 16, epochs=2, learning_rate=5e-3)

    model2, guide2 = make_classifier()
    assert all(torch.equal(start[k], v) for k, v in trained_tensors(model2, guide2).items())
    trainer = SequentialTrainer(model2, guide2, arguments(tmp_path), train_dataset=data, data_collator=stack)
    trainer.train()
    by_trainer = trained_tensors(model2, guide2)
    assert by_fit.keys() == by_trainer.keys()
    moved = max((by_fit[k] - start[k]).abs().max().item() for k in by_fit)
    assert moved > 1e-2  # training moved the parameters ...
    for name in by_fit:  # ... and both loops moved them the same way
        torch.testing.assert_close(by_trainer[name], by_fit[name], rtol=1e-4, atol=1e-5, msg=name)
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged and all("kl" in entry and "nll" in entry for entry in logged)
    assert math.isclose(result.steps[-1]["lr"], 0.0, abs_tol=1e-12)


def test_the_objective_is_the_negative_elbo_per_example():
    model, guide = make_classifier()
    model.dataset_size = 64
    data = TokenSetTask(8, seed=0)
    batch = stack([data[i] for i in range(8)])
    objective = ELBOObjective(model, guide, 64)
    torch.manual_seed(0)
    loss = objective(**batch)["loss"]
    torch.manual_seed(0)
    expected = objective.loss_module(**batch) / 64
    torch.testing.assert_close(loss, expected)
    assert {id(p) for p in objective.parameters() if p.requires_grad} == {
        id(p) for p in [*model.parameters(), *guide.parameters()] if p.requires_grad
    }


def test_a_trainer_checkpoint_resumes_exactly(tmp_path):
    data = TokenSetTask(64, seed=0)
    model, guide = make_classifier()
    whole = SequentialTrainer(model, guide, arguments(tmp_path / "whole"), train_dataset=data, data_collator=stack)
    whole.train()
    expected = trained_tensors(model, guide)

    model, guide = make_classifier()
    first = SequentialTrainer(
        model,
        guide,
        arguments(tmp_path / "cut", save_strategy="steps", save_steps=5),
        train_dataset=data,
        data_collator=stack,
        callbacks=[StopAt(5)],
    )
    first.train()  # stopped after step 5 of 8, as an interrupted run would be
    checkpoint = tmp_path / "cut" / "checkpoint-5"
    names = sorted(p.name for p in checkpoint.iterdir())
    assert "model.safetensors" in names and "training_state.safetensors" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))], names
    assert json.loads((checkpoint / "training_args.json").read_text())["learning_rate"] == 5e-3

    model, guide = make_classifier()
    with torch.no_grad():  # other trained values: all must come from the checkpoint
        for parameter in [*model.parameters(), *guide.parameters()]:
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter))
    resumed = SequentialTrainer(
        model,
        guide,
        arguments(tmp_path / "cut", save_strategy="steps", save_steps=5),
        train_dataset=data,
        data_collator=stack,
    )
    resumed.train(resume_from_checkpoint=str(checkpoint))
    got = trained_tensors(model, guide)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    reloaded, reloaded_guide = load_pretrained(checkpoint, base_model=tiny_bert_classifier(seed=0))
    assert set(read_trained_tensors(checkpoint)) == set(trained_tensors(reloaded, reloaded_guide))


def test_evaluation_is_the_posterior_predictive(tmp_path):
    data = TokenSetTask(32, seed=1)
    model, guide = make_classifier(random_B=True)
    trainer = MonteCLoRATrainer(
        model,
        guide,
        arguments(tmp_path),
        num_samples=4,
        eval_dataset=data,
        data_collator=stack,
        train_dataset=TokenSetTask(32, seed=0),
    )
    metrics = trainer.evaluate()
    for key in ("eval_accuracy", "eval_nll", "eval_ece", "eval_brier", "eval_mean_mutual_information"):
        assert key in metrics, metrics
    assert math.isclose(metrics["eval_loss"], metrics["eval_nll"], rel_tol=1e-5)
    assert metrics["eval_mean_mutual_information"] > 0  # S = 4 draws disagree
    # S = 0 is the mean adapter: no disagreement, and the metrics of fit's evaluator
    trainer.num_samples = 0
    mean = trainer.evaluate()
    assert mean["eval_mean_mutual_information"] == 0
    from pyro_monteclora.training.svi import evaluate_loader

    reference = evaluate_loader(model, guide, DataLoader(data, batch_size=8, collate_fn=stack), num_samples=0)
    assert math.isclose(mean["eval_nll"], reference["nll"], rel_tol=1e-5)
    assert math.isclose(mean["eval_accuracy"], reference["accuracy"], rel_tol=1e-9)


def test_posterior_metrics_by_hand():
    log_probs = np.log(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    metrics = posterior_metrics((log_probs, np.array([0.0, 0.1, 0.2])), np.array([0, 1, 1]))
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.8) + math.log(0.4)) / 3)
    assert metrics["brier"] == pytest.approx((2 * 0.1**2 + 2 * 0.2**2 + 2 * 0.6**2) / 3)
    assert metrics["mean_mutual_information"] == pytest.approx(0.1)
    lm = language_model_posterior_metrics((np.array([-2.0, -4.0]), np.array([2.0, 2.0])))
    assert lm["token_nll"] == pytest.approx(1.5) and lm["perplexity"] == pytest.approx(math.exp(1.5))


def test_a_decoder_trains_like_fit(tmp_path):
    torch.manual_seed(0)
    ids = torch.randint(4, 60, (16, 6))
    items = [{"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row.clone()} for row in ids]

    def make():
        torch.manual_seed(0)
        model = MonteCLoRAModel(tiny_llama(), MonteCLoRAConfig(rank=2, target_modules=["q_proj", "v_proj"]))
        return model, MonteCLoRAGuide(model)

    model, guide = make()
    _, by_fit = fitted(model, guide, items, 4, epochs=1, learning_rate=1e-2)
    model, guide = make()
    args = arguments(tmp_path, per_device_train_batch_size=4, num_train_epochs=1, learning_rate=1e-2)
    trainer = SequentialTrainer(model, guide, args, train_dataset=items, data_collator=stack, eval_dataset=items[:4])
    trainer.train()
    by_trainer = trained_tensors(model, guide)
    for name in by_fit:
        torch.testing.assert_close(by_trainer[name], by_fit[name], rtol=1e-4, atol=1e-5, msg=name)
    metrics = trainer.evaluate()
    assert metrics["eval_token_nll"] > 0 and math.isclose(
        metrics["eval_perplexity"], math.exp(metrics["eval_token_nll"])
    )


def test_gradient_accumulation_is_the_larger_batch(tmp_path):
    """Two micro-batches of 8 accumulated are one batch of 16: with s = 0 (no noise) and plain SGD
    (which, unlike Adam, would show a loss scaled by 2) the parameters agree to rounding."""
    data = TokenSetTask(32, seed=0)
    runs = {}
    for accumulate, batch in ((1, 16), (2, 8)):
        model, guide = ddp_model()
        args = arguments(
            tmp_path / str(accumulate),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accumulate,
            num_train_epochs=2,
            learning_rate=0.5,
            optim="sgd",
        )
        SequentialTrainer(model, guide, args, train_dataset=data, data_collator=stack).train()
        runs[accumulate] = trained_tensors(model, guide)
    start = trained_tensors(*ddp_model())
    assert max((runs[1][k] - start[k]).abs().max().item() for k in start) > 1e-3
    for name in runs[1]:
        torch.testing.assert_close(runs[2][name], runs[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_the_logged_nll_is_fits_under_kl_annealing(tmp_path):
    """Step t's loss carries the KL factor of step t: the logged nll removes that factor, not the
    next step's (global_step has already moved on when Trainer logs)."""
    data = TokenSetTask(32, seed=0)
    model, guide = make_classifier()
    result, _ = fitted(model, guide, data, 16, epochs=2, learning_rate=5e-3, kl_anneal_steps=4, log_every=1)
    model, guide = make_classifier()
    args = arguments(tmp_path, logging_steps=1)
    trainer = SequentialTrainer(model, guide, args, kl_anneal_steps=4, train_dataset=data, data_collator=stack)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "nll" in entry]
    assert [record["kl_factor"] for record in result.steps] == [0.0, 0.25, 0.5, 0.75]
    assert len(logged) == len(result.steps) == 4
    for entry, record in zip(logged, result.steps):
        assert entry["loss"] == pytest.approx(record["loss"], rel=1e-4)
        assert entry["kl"] == pytest.approx(record["kl"], rel=1e-4)
        assert entry["nll"] == pytest.approx(record["nll"], rel=1e-4, abs=1e-5)


DDP_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import torch
from safetensors.torch import save_file
from test_trainer import SequentialTrainer, arguments, ddp_model, global_items, stack, trained_tensors

torch.set_num_threads(1)
model, guide = ddp_model()
args = arguments({out_dir!r}, per_device_train_batch_size=4, ddp_backend="gloo", learning_rate=1e-2)
trainer = SequentialTrainer(model, guide, args, train_dataset=global_items(), data_collator=stack)
trainer.train()
assert trainer.args.world_size == 2, trainer.args.world_size
if trainer.is_world_process_zero():
    save_file(trained_tensors(model, guide), {out!r})
import torch.distributed as dist

dist.barrier()  # no rank leaves while another still works in the group
# Every rank has synchronised and rank 0 has written its file. Leave without the interpreter's
# teardown: CI runs saw a rank abort there ("terminate called without an active exception", a
# gloo thread still joinable during static destruction) even after destroy_process_group().
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


def ddp_model():
    """s = 0: the noise does not move the loss, so two processes and one see the same numbers."""
    torch.manual_seed(0)
    model = MonteCLoRAModel(
        tiny_bert_classifier(), MonteCLoRAConfig(rank=4, sample_scaler=0.0, modules_to_save=["classifier"])
    )
    return model, MonteCLoRAGuide(model)


def global_items():
    return TokenSetTask(32, seed=0)


def test_two_gloo_processes_train_through_the_trainer_as_one(tmp_path):
    from test_distributed import TESTS, torchrun

    out = tmp_path / "ddp.safetensors"
    script = tmp_path / "ddp_trainer.py"
    script.write_text(DDP_SCRIPT.format(tests=str(TESTS), out=str(out), out_dir=str(tmp_path / "ddp")))
    done = torchrun([str(script)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    model, guide = ddp_model()
    start = trained_tensors(model, guide)
    args = arguments(tmp_path / "one", per_device_train_batch_size=8, learning_rate=1e-2)
    SequentialTrainer(model, guide, args, train_dataset=global_items(), data_collator=stack).train()
    single = trained_tensors(model, guide)
    from safetensors.torch import load_file

    ddp = load_file(str(out))
    assert ddp.keys() == single.keys()
    assert max((single[k] - start[k]).abs().max().item() for k in single) > 1e-3
    for name, value in single.items():
        torch.testing.assert_close(ddp[name], value, rtol=1e-4, atol=1e-6, msg=name)


class Flipped(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        item = dict(self.data[index])
        item["labels"] = 1 - item["labels"]
        return item


def test_best_model_at_end_and_early_stopping_read_the_predictive_nll(tmp_path):
    from transformers import EarlyStoppingCallback

    model, guide = make_classifier()
    args = arguments(
        tmp_path,
        num_train_epochs=6,
        learning_rate=5e-2,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="nll",
        greater_is_better=False,
        save_total_limit=2,
    )
    trainer = MonteCLoRATrainer(
        model,
        guide,
        args,
        num_samples=2,
        train_dataset=TokenSetTask(64, seed=0),
        eval_dataset=Flipped(TokenSetTask(32, seed=1)),  # learning the task makes it worse here
        data_collator=stack,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=1)],
    )
    trainer.train()
    evaluations = [e for e in trainer.state.log_history if "eval_nll" in e]
    assert len(evaluations) < 6  # stopped early
    assert evaluations[0]["eval_nll"] < evaluations[-1]["eval_nll"]
    best = min(evaluations, key=lambda e: e["eval_nll"])
    assert trainer.state.best_metric == pytest.approx(best["eval_nll"])
    best_dir = trainer.state.best_model_checkpoint
    assert best_dir is not None and best_dir.endswith(f"checkpoint-{best['step']}")
    # the model holds the best checkpoint's tensors, not the last step's
    saved = read_trained_tensors(best_dir)
    for name, value in trained_tensors(model, guide).items():
        torch.testing.assert_close(value, saved[name], msg=name)


def test_bf16_autocast_trains_on_cpu(tmp_path):
    model, guide = make_classifier()
    args = arguments(tmp_path, bf16=True, num_train_epochs=1)
    trainer = MonteCLoRATrainer(model, guide, args, train_dataset=TokenSetTask(32, seed=0), data_collator=stack)
    start = trained_tensors(model, guide)
    trainer.train()
    after = trained_tensors(model, guide)
    assert all(t.dtype == torch.float32 for t in after.values())  # trainable tensors stay fp32
    assert any(not torch.equal(after[k], start[k]) for k in start)
