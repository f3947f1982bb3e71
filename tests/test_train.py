"""fit(): the loss falls, a learnable task is learnt, runs are reproducible, bad settings fail early."""

import math
import re

import pyro
import pytest
import torch
import torch.nn.functional as F
from conftest import classification_batch, tiny_bert_classifier
from torch.utils.data import DataLoader, Dataset

from pyro_monteclora import EmptyGuide, MonteCLoRAConfig, MonteCLoRAGuide, MonteCLoRAModel
from pyro_monteclora.training.svi import fit, linear_schedule


class TokenSetTask(Dataset):
    """Label 1: every token drawn from [10, 30); label 0: from [30, 50). Learnable, not trivial."""

    def __init__(self, size: int, length: int = 8, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 2, (size,), generator=g)
        low = torch.where(self.labels == 1, 10, 30)
        self.input_ids = low[:, None] + torch.randint(0, 20, (size, length), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {
            "input_ids": self.input_ids[i],
            "attention_mask": torch.ones_like(self.input_ids[i]),
            "labels": self.labels[i],
            "example_index": torch.tensor(i),
        }


def loaders(train_size=256, test_size=128, batch_size=16):
    train = DataLoader(
        TokenSetTask(train_size, seed=0),
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    test = DataLoader(TokenSetTask(test_size, seed=1), batch_size=64)
    return train, test


def make(mode="monteclora", **config):
    model = MonteCLoRAModel(
        tiny_bert_classifier(),
        MonteCLoRAConfig(rank=4, modules_to_save=["classifier"], **config),
        adapter_mode="sample" if mode == "monteclora" else "mean",
    )
    return model, (MonteCLoRAGuide(model) if mode == "monteclora" else EmptyGuide(model))


@pytest.mark.parametrize("mode", ["monteclora", "lora"])
def test_fit_learns_a_synthetic_task(mode):
    model, guide = make(mode, sample_scaler=0.05)
    train, test = loaders()
    result = fit(
        model, guide, train, epochs=8, learning_rate=5e-3, seed=0, progress=False, eval_loader=test, eval_num_samples=4
    )
    losses = [s["loss"] for s in result.steps]
    assert len(losses) == 128
    assert sum(losses[-16:]) / 16 < 0.5 * sum(losses[:16]) / 16
    assert result.epochs[-1]["accuracy"] > 0.9
    assert model.dataset_size == 256


def test_lora_mode_loss_is_the_mean_cross_entropy():
    model, guide = make("lora")
    batch = classification_batch(batch_size=16)
    with torch.no_grad():
        expected = F.cross_entropy(
            model.network(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"]
        )
    model.dataset_size = 1000
    result = fit(model, guide, [batch], epochs=1, learning_rate=1e-9, max_grad_norm=None, progress=False)
    assert result.steps[0]["loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert result.steps[0]["kl"] == 0.0 and result.steps[0]["nll"] == result.steps[0]["loss"]


def test_fit_is_reproducible_with_a_seed():
    params = []
    for _ in range(2):
        model, guide = make(sample_scaler=0.1)
        train, _ = loaders(train_size=64)
        fit(model, guide, train, epochs=1, learning_rate=1e-2, seed=3, progress=False)
        params.append(torch.cat([p.detach().flatten() for p in list(model.parameters()) + list(guide.parameters())]))
    assert torch.equal(params[0], params[1])


def test_kl_annealing_and_schedule_are_recorded():
    model, guide = make()
    train, _ = loaders(train_size=64)
    result = fit(
        model,
        guide,
        train,
        epochs=1,
        kl_anneal_steps=2,
        warmup_ratio=0.5,
        log_every=1,
        learning_rate=1e-3,
        progress=False,
    )
    assert [s["kl_factor"] for s in result.steps] == [0.0, 0.5, 1.0, 1.0]
    assert [round(s["lr"] / 1e-3, 6) for s in result.steps] == [1.0, 1.0, 0.5, 0.0]
    assert all(math.isfinite(s["kl"]) and s["kl"] >= 0 for s in result.steps)
    sparse = fit(model, guide, train, epochs=1, log_every=3, progress=False)
    assert [s["kl"] is None for s in sparse.steps] == [False, True, True, False]
    schedule = linear_schedule(10, 2)
    assert [schedule(i) for i in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]


@pytest.mark.parametrize("loss", ["monteclora", "meanfield"])
def test_kl_weight_zero_drops_the_kl_from_the_loss(loss):
    model, guide = make(kl_weight=0.0, sample_scaler=0.1)
    batch = classification_batch(batch_size=16)
    model.dataset_size = 16
    result = fit(model, guide, [batch], epochs=1, learning_rate=1e-9, loss=loss, progress=False)
    record = result.steps[0]
    assert record["kl"] > 0  # the guide differs from the prior ...
    assert record["nll"] == pytest.approx(record["loss"])  # ... but the loss carries no KL


def test_max_steps_stops_early():
    model, guide = make()
    train, _ = loaders(train_size=64)
    assert len(fit(model, guide, train, epochs=3, max_steps=5, progress=False).steps) == 5


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_a_non_finite_loss_stops_with_the_step():
    model, guide = make()
    with torch.no_grad():
        model.network.classifier.weight.fill_(float("nan"))  # NaN logits, whatever the kernels do
    train, _ = loaders(train_size=64)
    with pytest.raises(FloatingPointError, match="step 0"):
        fit(model, guide, train, progress=False)


@pytest.mark.parametrize(
    "kwargs,field",
    [
        (dict(learning_rate=-1.0), "learning_rate"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(epochs=0), "epochs"),
        (dict(warmup_ratio=1.0), "warmup_ratio"),
        (dict(loss="elbo"), "loss"),
        (dict(max_grad_norm=0), "max_grad_norm"),
        (dict(eval_num_samples=-1), "eval_num_samples"),
        (dict(weight_decay=-0.1), "weight_decay"),
    ],
)
def test_bad_settings_fail_before_any_step(kwargs, field):
    model, guide = make()
    before = [p.detach().clone() for p in model.parameters()]
    train, _ = loaders(train_size=32)
    with pytest.raises(ValueError, match=field):
        fit(model, guide, train, progress=False, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def _poison_after_first_epoch(model):
    def poison(state):
        with torch.no_grad():
            model.network.classifier.weight.fill_(float("inf"))

    return poison


def test_a_non_finite_loss_names_the_step_or_is_skipped_when_asked():
    model, guide = make()
    train, _ = loaders(train_size=32)
    with pytest.raises(FloatingPointError, match=r"at step 2 \(epoch 1\)"):
        fit(model, guide, train, epochs=2, progress=False, on_epoch_end=_poison_after_first_epoch(model))
    model, guide = make()
    result = fit(
        model,
        guide,
        train,
        epochs=2,
        progress=False,
        skip_nonfinite=True,
        on_epoch_end=_poison_after_first_epoch(model),
    )
    assert [bool(s.get("skipped")) for s in result.steps] == [False, False, True, True]
    assert result.steps[-1]["lr"] == 0.0  # the schedule went on through the skipped steps


# -- the pieces of fit: TrainConfig, callbacks, evaluate, SVIStep/train_epoch ----------------------
from dataclasses import FrozenInstanceError, fields  # noqa: E402

from pyro_monteclora.evaluation.evaluators import (  # noqa: E402
    ClassificationEvaluator,
    LanguageModelEvaluator,
    evaluator_for,
)
from pyro_monteclora.training.svi import SVIStep, TrainConfig, train_epoch  # noqa: E402

BAD_FIELDS = [
    ("epochs", 0),
    ("epochs", 1.5),
    ("max_steps", 0),
    ("learning_rate", 0.0),
    ("learning_rate", math.inf),
    ("weight_decay", -1e-3),
    ("warmup_ratio", -0.1),
    ("warmup_ratio", True),
    ("max_grad_norm", -1.0),
    ("loss", "elbo"),
    ("loss", None),
    ("num_particles", 0),
    ("kl_anneal_steps", -1),
    ("log_every", 0),
    ("seed", -1),
    ("seed", 1.0),
    ("skip_nonfinite", 1),
    ("dtype", torch.float64),
    ("dtype", "bf16"),
    ("validate_args", "yes"),
    ("progress", None),
    ("desc", 3),
]


def test_every_train_config_field_is_checked():
    assert {name for name, _ in BAD_FIELDS} == {f.name for f in fields(TrainConfig)}


@pytest.mark.parametrize("name,value", BAD_FIELDS)
def test_a_bad_train_config_field_is_named(name, value):
    with pytest.raises(ValueError, match=rf"^fit\(\): {name} must be .*, got {re.escape(repr(value))}$"):
        TrainConfig(**{name: value})
    with pytest.raises(ValueError, match=rf"^fit\(\): {name} must be"):  # and replace() validates too
        TrainConfig().replace(**{name: value})


def test_train_config_is_frozen_and_fit_keywords_override_it():
    config = TrainConfig(epochs=3, progress=False)
    with pytest.raises(FrozenInstanceError):
        config.epochs = 2
    model, guide = make()
    train, _ = loaders(train_size=32)
    assert len(fit(model, guide, train, config, epochs=1).steps) == 2  # 32 / 16, one epoch
    with pytest.raises(TypeError, match="learning_rte"):
        fit(model, guide, train, config, learning_rte=1e-3)


def test_callbacks_get_the_training_state_after_every_epoch():
    model, guide = make()
    train, _ = loaders(train_size=32)
    calls = []
    result = fit(
        model,
        guide,
        train,
        epochs=3,
        progress=False,
        callbacks=[lambda state: calls.append(("a", state)), lambda state: calls.append(("b", state))],
        on_epoch_end=lambda state: calls.append(("on_epoch_end", state)),
    )
    assert [name for name, _ in calls] == ["a", "b", "on_epoch_end"] * 3
    states = [state for name, state in calls if name == "a"]
    assert [(s.epoch, s.step) for s in states] == [(1, 2), (2, 4), (3, 6)]
    assert [len(s.history["epochs"]) for s in states] == [1, 2, 3]
    assert states[-1].history["epochs"] == result.epochs and len(states[-1].history["steps"]) == 6
    assert all(s.optimizer["state"] and s.scheduler["last_epoch"] == s.step and "torch" in s.rng for s in states)
    with pytest.raises(ValueError, match="callbacks"):
        fit(model, guide, train, progress=False, callbacks=["checkpoint"])


def test_a_custom_evaluate_is_used_and_its_metrics_land_in_the_epochs():
    model, guide = make()
    train, test = loaders(train_size=32)
    seen = []

    def evaluate(model_, guide_):
        seen.append((model_ is model, guide_ is guide, model_.training))
        return {"custom": float(len(seen))}

    result = fit(model, guide, train, epochs=2, progress=False, evaluate=evaluate)
    assert seen == [(True, True, True)] * 2
    assert [(e["epoch"], e["custom"]) for e in result.epochs] == [(0, 1.0), (1, 2.0)]
    assert all(set(e) == {"epoch", "loss", "custom"} for e in result.epochs)
    with pytest.raises(ValueError, match="evaluate= or eval_loader="):
        fit(model, guide, train, progress=False, evaluate=evaluate, eval_loader=test)
    with pytest.raises(ValueError, match="evaluate must be"):
        fit(model, guide, train, progress=False, evaluate="accuracy")


def test_eval_loader_is_the_evaluator_of_the_likelihood():
    from conftest import tiny_llama

    epochs = []
    for explicit in (False, True):
        model, guide = make(sample_scaler=0.1)
        train, test = loaders(train_size=32)  # a fresh shuffle generator for each run
        evaluation = (
            dict(evaluate=ClassificationEvaluator(test, num_samples=2, ece_bins=5))
            if explicit
            else dict(eval_loader=test, eval_num_samples=2, ece_bins=5)
        )
        epochs.append(fit(model, guide, train, epochs=2, seed=0, progress=False, **evaluation).epochs)
    assert epochs[0] == epochs[1] and "ece" in epochs[0][0]
    assert isinstance(evaluator_for(model, test), ClassificationEvaluator)
    decoder = MonteCLoRAModel(tiny_llama(), MonteCLoRAConfig(rank=2, target_modules=["q_proj"]))
    assert isinstance(evaluator_for(decoder, test, num_samples=3), LanguageModelEvaluator)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 0"):
        ClassificationEvaluator(test, num_samples=-1)


def test_fit_is_svi_step_and_train_epoch_repeated():
    """The pieces on their own train exactly as fit does."""
    params, histories = [], []
    for by_hand in (False, True):
        model, guide = make(sample_scaler=0.1)
        train, _ = loaders(train_size=48)
        config = TrainConfig(epochs=2, learning_rate=1e-2, seed=5, log_every=2, progress=False)
        if by_hand:
            pyro.set_rng_seed(config.seed)
            model.dataset_size = 48
            svi_step, step = SVIStep(model, guide, config, dataset_size=48, total_steps=6), 0
            model.train()
            for epoch in range(2):
                summary, step = train_epoch(svi_step, train, epoch, step)
                svi_step.result.epochs.append(summary)
            result = svi_step.result
        else:
            result = fit(model, guide, train, config)
        params.append(torch.cat([p.detach().flatten() for p in list(model.parameters()) + list(guide.parameters())]))
        histories.append((result.steps, result.epochs))
    assert torch.equal(params[0], params[1]) and histories[0] == histories[1]
