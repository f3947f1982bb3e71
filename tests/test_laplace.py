"""Laplace-LoRA: a post-hoc KFAC Laplace posterior over a LoRA adapter, through laplace-torch.

The reference in these tests is laplace-torch called directly on an independent replica of the
LoRA classifier whose adapters are ordinary ``nn.Linear`` modules (what laplace-torch supports out
of the box): same Laplace class (``KronLaplace``), same backend (``CurvlinopsGGN``), same parameter
values, same data.
"""

import json

import pytest
import torch
from conftest import classification_batch, tiny_bert_classifier, tiny_llama
from torch import nn
from torch.utils.data import DataLoader

from pyro_monteclora import FullFineTuneModel, MonteCLoRAConfig, MonteCLoRAModel
from pyro_monteclora.infer import LaplaceLoRA, fit_laplace, laplace_predict

laplace_torch = pytest.importorskip("laplace")
from laplace.curvature import CurvlinopsGGN  # noqa: E402

TARGETS = ["query", "value"]
# what laplace-torch says when the reference is called directly (fit_laplace silences both)
pytestmark = [
    pytest.mark.filterwarnings("ignore:By default `link_approx` is `probit`"),
    pytest.mark.filterwarnings("ignore:There is a performance drop because we have not yet implemented"),
]


def lora_classifier(seed: int = 0, rank: int = 2) -> MonteCLoRAModel:
    """A tiny LoRA classifier whose B factors are non-zero (else every Jacobian w.r.t. A is 0) and
    whose head gives logits of order 1 (the random head's are about 0.01: every probability 0.5)."""
    model = MonteCLoRAModel(
        tiny_bert_classifier(seed=0),
        MonteCLoRAConfig(rank=rank, target_modules=TARGETS, modules_to_save=["classifier"]),
        adapter_mode="mean",
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in model.adapters().values():
            adapter.lora_B.copy_(0.5 * torch.randn(adapter.lora_B.shape, generator=generator))
        model.network.classifier.weight.mul_(100.0)
    return model


def loader(count: int = 12, batch_size: int = 4, seed: int = 1) -> DataLoader:
    batch = classification_batch(batch_size=count, seed=seed)
    items = [{key: value[i] for key, value in batch.items()} for i in range(count)]
    return DataLoader(items, batch_size=batch_size)


def inputs_of(batch: dict) -> dict:
    return {key: value for key, value in batch.items() if key != "labels"}


class HandLoRA(nn.Module):
    """A LoRA layer built from nn.Linear: base(x) + scaling * B(A(x)), with copied factors."""

    def __init__(self, base: nn.Module, adapter):
        super().__init__()
        self.base = base
        self.A = nn.Linear(adapter.in_features, adapter.rank, bias=False)
        self.B = nn.Linear(adapter.rank, adapter.out_features, bias=False)
        self.A.weight = nn.Parameter(adapter.lora_A_mean.detach().clone())
        self.B.weight = nn.Parameter(adapter.lora_B.detach().clone())
        self.scaling = adapter.scaling

    def forward(self, x):
        return self.base(x) + self.scaling * self.B(self.A(x))


class DictClassifier(nn.Module):
    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, batch):
        return self.network(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def hand_replica(model: MonteCLoRAModel) -> nn.Module:
    """The same classifier (same base, head and adapter values), adapters as nn.Linear, and only
    the adapter factors trainable: laplace-torch's own LoRA use."""
    network = tiny_bert_classifier(seed=0)
    network.load_state_dict(
        {k: v for k, v in model.network.state_dict().items() if "lora_" not in k and "base_layer" not in k},
        strict=False,
    )
    for parameter in network.parameters():
        parameter.requires_grad_(False)
    for path, adapter in model.adapters().items():
        parent, _, child = path.rpartition(".")
        base = network.get_submodule(path)
        base.load_state_dict(adapter.base_layer.state_dict())
        setattr(network.get_submodule(parent), child, HandLoRA(base, adapter))
    return DictClassifier(network.eval())


@pytest.fixture(scope="module")
def fitted():
    """Our fit (marglik) and laplace-torch's, by hand, on the replica."""
    torch.manual_seed(0)
    model, data = lora_classifier(), loader()
    ours = fit_laplace(model, data, prior_precision="marglik", link_approx="mc")
    reference = laplace_torch.Laplace(
        hand_replica(model),
        "classification",
        subset_of_weights="all",
        hessian_structure="kron",
        backend=CurvlinopsGGN,
    )
    reference.fit(data)
    reference.optimize_prior_precision(pred_type="glm", method="marglik", prior_structure="scalar")
    return model, data, ours, reference


def test_covers_the_adapter_factors_only(fitted):
    model, _, ours, reference = fitted
    names = list(ours.parameter_shapes())
    assert names == [f"network.{p}.{f}" for p in model.adapters() for f in ("lora_A_mean", "lora_B")]
    assert (
        ours.laplace.n_params
        == reference.n_params
        == sum(a.lora_A_mean.numel() + a.lora_B.numel() for a in model.adapters().values())
    )
    assert type(ours.laplace).__name__ == type(reference).__name__ == "KronLaplace"


def test_agrees_with_laplace_torch_called_directly(fitted):
    model, data, ours, reference = fitted
    # (e) and the same marginal-likelihood optimum
    assert 0 < ours.prior_precision < float("inf")
    assert ours.prior_precision == pytest.approx(float(reference.prior_precision), rel=1e-4)
    for a, b in zip(ours.laplace.H_facs.kfacs, reference.H_facs.kfacs):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-6)
    # probit: laplace-torch's own __call__
    ours.link_approx = "probit"
    try:
        probit = ours.predict(data, num_samples=10).probs
    finally:
        ours.link_approx = "mc"
    expected = torch.cat([reference(inputs_of(b), pred_type="glm", link_approx="probit") for b in data])
    torch.testing.assert_close(probit, expected, rtol=1e-4, atol=1e-6)
    # MC link: laplace-torch's predictive samples with the same generator
    generator = torch.Generator().manual_seed(3)
    draws = [
        reference.predictive_samples(inputs_of(b), pred_type="glm", n_samples=200, generator=generator) for b in data
    ]
    out = ours.predict(data, num_samples=200, seed=3)
    torch.testing.assert_close(out.probs, torch.cat([d.mean(0) for d in draws]), rtol=1e-4, atol=1e-5)
    entropies = torch.cat([-(d * d.log()).sum(-1).mean(0) for d in draws])
    torch.testing.assert_close(out.expected_entropy, entropies, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.mutual_information, out.predictive_entropy - out.expected_entropy, atol=1e-6, rtol=0)
    assert (out.mutual_information > 0).all()
    assert torch.equal(out.labels, torch.cat([b["labels"] for b in data]))


def test_fit_leaves_the_model_as_it_was():
    model, data = lora_classifier(), loader(count=8)
    batch = inputs_of(next(iter(data)))
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        logits = model.logits(**batch)
    laplace = fit_laplace(model, data, prior_precision=1.0)
    laplace.predict(data, num_samples=4)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not any("forward" in vars(adapter) for adapter in model.adapters().values())
    assert model.training  # evaluation mode was given back
    with torch.no_grad():
        torch.testing.assert_close(model.logits(**batch), logits, rtol=0, atol=0)


def test_huge_prior_precision_gives_the_lora_point_predictive():
    model, data = lora_classifier(), loader(count=8)
    with torch.no_grad(), model.mean_adapters():
        point = torch.cat([model.logits(**inputs_of(b)).softmax(-1) for b in data])
    laplace = fit_laplace(model, data, prior_precision=1e8, link_approx="mc")
    wide = fit_laplace(model, data, prior_precision=1e-2, link_approx="mc")
    near = laplace.predict(data, num_samples=100)
    torch.testing.assert_close(near.probs, point, rtol=0, atol=1e-4)
    assert near.mutual_information.max() < 1e-6
    assert (wide.predict(data, num_samples=100).probs - point).abs().max() > 1e-2  # the test can fail
    laplace.link_approx = "probit"
    torch.testing.assert_close(laplace_predict(laplace, data, num_samples=10).probs, point, rtol=0, atol=1e-5)


def test_save_load_round_trip(tmp_path):
    model, data = lora_classifier(), loader(count=8)
    laplace = fit_laplace(model, data, prior_precision=0.5, link_approx="probit")
    laplace.save(tmp_path / "laplace")
    meta = json.loads((tmp_path / "laplace" / "laplace.json").read_text())
    assert meta["format_version"] == 1 and meta["hessian_structure"] == "kron" and meta["link_approx"] == "probit"
    assert meta["prior_precision"] == {"method": "given", "value": 0.5}
    assert [p["name"] for p in meta["parameters"]] == list(laplace.parameter_shapes())
    assert sorted(p.name for p in (tmp_path / "laplace").iterdir()) == ["laplace.json", "laplace.safetensors"]
    loaded = LaplaceLoRA.load(tmp_path / "laplace", model)
    assert loaded.link_approx == "probit" and loaded.prior_precision == 0.5 and loaded.prior_method == "given"
    for link in ("probit", "mc"):
        laplace.link_approx = loaded.link_approx = link
        a, b = laplace.predict(data, num_samples=50), loaded.predict(data, num_samples=50)
        for field in ("probs", "predictive_entropy", "expected_entropy", "mutual_information"):
            assert torch.equal(getattr(a, field), getattr(b, field)), (link, field)


def test_load_refuses_a_posterior_of_another_model(tmp_path):
    model, data = lora_classifier(), loader(count=8)
    fit_laplace(model, data, prior_precision=1.0).save(tmp_path)
    with pytest.raises(ValueError, match="fitted at other adapter values"):
        LaplaceLoRA.load(tmp_path, lora_classifier(seed=5))
    with pytest.raises(ValueError, match=r"covers other adapter parameters .*shapes"):
        LaplaceLoRA.load(tmp_path, lora_classifier(rank=3))
    tensors = tmp_path / "laplace.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="SHA-256 differs"):
        LaplaceLoRA.load(tmp_path, model)
    tensors.unlink()
    with pytest.raises(ValueError, match="laplace.safetensors: no such file"):
        LaplaceLoRA.load(tmp_path, model)


@pytest.mark.parametrize(
    "make, what",
    [
        (
            lambda: MonteCLoRAModel(tiny_bert_classifier(), MonteCLoRAConfig(rank=2, target_modules=TARGETS)),
            r"this one is a MonteCLoRA model \(adapter_mode 'sample'",
        ),
        (
            lambda: MonteCLoRAModel(
                tiny_llama(), MonteCLoRAConfig(rank=2, target_modules=["q_proj"]), adapter_mode="mean"
            ),
            r"this one is a LoRA model with a 'causal-lm' likelihood",
        ),
        (lambda: FullFineTuneModel(tiny_bert_classifier()), r"this one is a FullFineTuneModel \(full fine-tuning"),
    ],
    ids=["monteclora", "causal-lm", "full-finetune"],
)
def test_refuses_what_it_does_not_apply_to(make, what):
    with pytest.raises(ValueError, match=r"^Laplace-LoRA applies to a LoRA checkpoint \(method lora\).*" + what):
        fit_laplace(make(), loader(count=4))


@pytest.mark.parametrize(
    "option, message",
    [
        ({"prior_precision": -1.0}, "prior_precision must be 'marglik' or a positive finite number, got -1.0"),
        ({"prior_precision": "validation"}, "prior_precision must be 'marglik' or a positive"),
        ({"hessian_structure": "diag"}, r"hessian_structure must be one of \['kron'\], got 'diag'"),
        ({"link_approx": "bridge"}, r"link_approx must be one of \['mc', 'probit'\], got 'bridge'"),
    ],
)
def test_bad_options(option, message):
    with pytest.raises(ValueError, match=message):
        fit_laplace(lora_classifier(), loader(count=4), **option)
