"""Laplace-LoRA (Yang et al., 2024): a post-hoc Gaussian posterior over a trained LoRA adapter,
through the ``laplace-torch`` library.

On a plain LoRA classifier (:class:`~pyro_monteclora.MonteCLoRAModel` with ``adapter_mode="mean"``)
trained to a MAP :math:`\\theta^*` (the adapters' :math:`M = ` ``lora_A_mean`` and ``lora_B`` of
every layer), the Laplace approximation is

.. math::

    q(\\theta) = \\mathcal N\\big(\\theta^*, (\\textstyle\\sum_{\\ell} G_\\ell \\otimes A_\\ell
    + \\lambda I)^{-1}\\big),

with one Kronecker-factored block (KFAC, type-2 GGN, from ``curvlinops``) per adapter factor and a
scalar prior precision :math:`\\lambda`, chosen by maximising the Laplace marginal likelihood or
given. The classifier head and the frozen base stay point estimates, as in the paper (which puts
the posterior on the LoRA parameters only). Predictions use the linearised (GLM) predictive
:math:`f(x) \\sim \\mathcal N(f_{\\theta^*}(x), J \\Sigma J^\\top)` over the logits, with the
softmax integrated by Monte Carlo over the logits (default) or by the probit approximation.

``laplace-torch``'s KFAC backends find Kronecker factors through ``nn.Linear`` modules, whereas
:class:`~pyro_monteclora.nn.layers.MonteCLoRALinear` holds its factors as raw parameters. Here the
library sees a thin network (:class:`AdapterNetwork`) whose only parameters are those very
``Parameter`` objects, registered as the weights of two bias-free ``nn.Linear`` views per adapter;
while it runs, each adapter's low-rank branch is computed through its views. Nothing of the LoRA
model is renamed, copied or changed.

``laplace-torch`` is an optional dependency, imported when a fit or a load starts.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import warnings
from pathlib import Path
from typing import Iterable, List, Union

import torch
from torch import nn

from pyro_monteclora.infer.predictive import (
    PredictiveOutput,
    entropy,
    evaluation_mode,
    move_batch,
    progress_bar,
)
from pyro_monteclora.nn.models import MonteCLoRAModel
from pyro_monteclora.storage.atomic import atomic_file, atomic_write_json

__all__ = [
    "LaplaceLoRA",
    "fit_laplace",
    "laplace_predict",
    "check_lora_classifier",
    "AdapterNetwork",
    "LINK_APPROXIMATIONS",
    "LAPLACE_FORMAT_VERSION",
]

#: how the GLM predictive integrates the softmax over the Gaussian logits
LINK_APPROXIMATIONS = ("mc", "probit")
#: the version of ``laplace.json``; a loader refuses any other
LAPLACE_FORMAT_VERSION = 1
HESSIAN_STRUCTURES = ("kron",)
_NON_INPUTS = ("labels", "example_index")


def check_lora_classifier(model) -> None:
    """Raise ``ValueError`` unless ``model`` is a plain LoRA sequence classifier.

    Laplace-LoRA needs a :class:`~pyro_monteclora.MonteCLoRAModel` with ``adapter_mode="mean"``
    (the adapters are point estimates), a ``sequence-classification`` likelihood and at least one
    adapter whose factors are trainable.
    """
    if not isinstance(model, MonteCLoRAModel):
        what = f"a {type(model).__name__}" + (
            " (full fine-tuning: no adapter)" if type(model).__name__ == "FullFineTuneModel" else ""
        )
    elif model.adapter_mode != "mean":
        what = f"a MonteCLoRA model (adapter_mode {model.adapter_mode!r}, method monteclora)"
    elif model.likelihood.name != "sequence-classification":
        what = f"a LoRA model with a {model.likelihood.name!r} likelihood (not a sequence classifier)"
    elif not model.adapters():
        what = "a model without adapters"
    else:
        frozen = [
            f"{path}.{name}"
            for path, adapter in model.adapters().items()
            for name in ("lora_A_mean", "lora_B")
            if not getattr(adapter, name).requires_grad
        ]
        if not frozen:
            return
        what = f"a LoRA model whose adapter factors {frozen[:3]} are frozen (requires_grad=False)"
    raise ValueError(
        "Laplace-LoRA applies to a LoRA checkpoint (method lora): a MonteCLoRAModel with "
        f"adapter_mode 'mean', a sequence-classification likelihood and adapters; this one is {what}"
    )


def _routed_forward(adapter, views: "_FactorViews", x: torch.Tensor) -> torch.Tensor:
    # The adapter's forward with the mean adapter, its low-rank branch through the nn.Linear views
    # (so that KFAC's hooks and torch.func's functional_call both see it): W0 x + b + gamma B A x.
    result = adapter.base_layer(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        update = views.lora_B(views.lora_A(adapter.dropout(x).float())) * adapter.scaling
    return (update + result).to(result.dtype)


class _FactorViews(nn.Module):
    """Two bias-free ``nn.Linear`` whose weights *are* an adapter's ``lora_A_mean`` (r, d_in) and
    ``lora_B`` (d_out, r): the same ``Parameter`` objects, not copies."""

    def __init__(self, adapter):
        super().__init__()
        rank, d_in, d_out = adapter.rank, adapter.in_features, adapter.out_features
        self.lora_A = nn.Linear(d_in, rank, bias=False, device="meta")
        self.lora_B = nn.Linear(rank, d_out, bias=False, device="meta")
        self.lora_A.weight = adapter.lora_A_mean
        self.lora_B.weight = adapter.lora_B


class AdapterNetwork(nn.Module):
    """The network ``laplace-torch`` is given: ``forward(batch)`` returns the LoRA classifier's
    logits for a batch dictionary (``labels`` and ``example_index`` are ignored), and its parameters
    are exactly the adapters' ``lora_A_mean`` and ``lora_B``, layer by layer (A then B), as
    ``nn.Linear`` weights. The LoRA model itself is held, not registered as a submodule, so the head
    and the frozen base are invisible to the library (point estimates).

    :param MonteCLoRAModel model: a plain LoRA classifier (see :func:`check_lora_classifier`).
    """

    def __init__(self, model: MonteCLoRAModel):
        super().__init__()
        object.__setattr__(self, "lora_model", model)  # not a submodule: its parameters stay hidden
        self.adapter_paths: List[str] = list(model.adapters())
        self.views = nn.ModuleList(_FactorViews(adapter) for adapter in model.adapters().values())

    def parameter_names(self) -> List[str]:
        """The checkpoint names (``network.<path>.lora_A_mean`` / ``.lora_B``) of the parameters,
        in the order of :meth:`parameters`."""
        return [f"network.{path}.{name}" for path in self.adapter_paths for name in ("lora_A_mean", "lora_B")]

    @contextlib.contextmanager
    def routed(self):
        """Within the block every adapter computes its low-rank branch through its views."""
        adapters = list(self.lora_model.adapters().values())
        try:
            for adapter, views in zip(adapters, self.views):
                adapter.forward = functools.partial(_routed_forward, adapter, views)
            yield self
        finally:
            for adapter in adapters:
                adapter.__dict__.pop("forward", None)

    def forward(self, batch: dict) -> torch.Tensor:
        device = self.views[0].lora_A.weight.device
        inputs = move_batch({k: v for k, v in batch.items() if k not in _NON_INPUTS}, device)
        with self.routed(), self.lora_model.mean_adapters():
            return self.lora_model.network(**inputs, return_dict=True).logits


@contextlib.contextmanager
def _quiet():
    # laplace-torch reminds every classification marglik that its link defaults to probit (this
    # module passes the link explicitly), and torch.func warns that attention's backward has no
    # batching rule (a slower path, same numbers): neither says anything to the user.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="By default `link_approx` is `probit`")
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
        yield


def _laplace_classes():
    try:
        from laplace import KronLaplace
        from laplace.curvature import CurvlinopsGGN
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Laplace-LoRA needs the optional dependency laplace-torch (pip install laplace-torch)"
        ) from error
    return KronLaplace, CurvlinopsGGN


class LaplaceLoRA:
    """A fitted Laplace-LoRA posterior over a LoRA classifier's adapters.

    Build it with :func:`fit_laplace` or :meth:`load`; predict with :meth:`predict`.

    :ivar model: the LoRA model (its adapters hold the MAP).
    :ivar laplace: the ``laplace.KronLaplace`` object (``curvlinops`` type-2 GGN backend).
    :ivar str link_approx: ``"mc"`` or ``"probit"``.
    :ivar str prior_method: ``"marglik"`` or ``"given"``.
    """

    def __init__(self, model: MonteCLoRAModel, network: AdapterNetwork, laplace, link_approx: str, prior_method: str):
        self.model = model
        self.network = network
        self.laplace = laplace
        self.link_approx = link_approx
        self.prior_method = prior_method

    @property
    def prior_precision(self) -> float:
        """The scalar prior precision :math:`\\lambda`."""
        return float(self.laplace.prior_precision.reshape(-1)[0])

    @property
    def hessian_structure(self) -> str:
        """``"kron"``."""
        return "kron"

    def parameter_shapes(self) -> dict:
        """``{checkpoint name: shape}`` of the parameters the posterior covers."""
        return {name: list(p.shape) for name, p in zip(self.network.parameter_names(), self.network.parameters())}

    # -- prediction --------------------------------------------------------------------------------
    def predict(
        self, loader: Iterable[dict], num_samples: int = 1000, seed: int = 0, device=None, progress: bool = False
    ) -> PredictiveOutput:
        """The GLM predictive over every batch of ``loader``; see :func:`laplace_predict`."""
        return laplace_predict(self, loader, num_samples=num_samples, seed=seed, device=device, progress=progress)

    # -- persistence -------------------------------------------------------------------------------
    def save(self, directory: Union[str, Path]) -> None:
        """Write ``laplace.safetensors`` (the MAP, the Kronecker factors, the prior precision) and
        ``laplace.json`` (format, structure, link, prior, the parameters covered, the tensors'
        SHA-256) into ``directory``, each file atomically, the JSON last."""
        from safetensors.torch import save_file

        directory = Path(directory)
        tensors, layout = _laplace_tensors(self.laplace)
        with atomic_file(directory / "laplace.safetensors") as temporary:
            save_file(tensors, str(temporary))
            digest = hashlib.sha256(temporary.read_bytes()).hexdigest()
        atomic_write_json(
            directory / "laplace.json",
            {
                "format_version": LAPLACE_FORMAT_VERSION,
                "method": "laplace-lora",
                "hessian_structure": self.hessian_structure,
                "backend": "curvlinops-ggn",
                "link_approx": self.link_approx,
                "prior_precision": {"method": self.prior_method, "value": self.prior_precision},
                "n_data": int(self.laplace.n_data),
                "n_outputs": int(self.laplace.n_outputs),
                "parameters": [{"name": n, "shape": s} for n, s in self.parameter_shapes().items()],
                "kron_factors": layout,
                "tensors_sha256": digest,
            },
        )

    @classmethod
    def load(cls, directory: Union[str, Path], model: MonteCLoRAModel) -> "LaplaceLoRA":
        """Rebuild a saved posterior for ``model`` (the LoRA model it was fitted on).

        :raises ValueError: when a file is missing or unreadable, or does not match ``model``'s
            adapter parameters (names, shapes or MAP values).
        """
        check_lora_classifier(model)
        meta, tensors = _read_files(Path(directory))
        network = AdapterNetwork(model)
        _check_matches(meta, tensors, network, Path(directory))
        KronLaplace, CurvlinopsGGN = _laplace_classes()
        laplace = KronLaplace(network, "classification", backend=CurvlinopsGGN)
        device, dtype = laplace._device, laplace._dtype
        layout = meta["kron_factors"]
        kfacs = [[tensors[f"kron.{i}.{j}"].to(device, dtype) for j in range(count)] for i, count in enumerate(layout)]
        laplace.load_state_dict(
            {
                "mean": tensors["mean"].to(device, dtype),
                "H": kfacs,
                "loss": tensors["loss"].to(device, dtype),
                "prior_mean": torch.zeros((), device=device, dtype=dtype),
                "prior_precision": tensors["prior_precision"].to(device, dtype),
                "sigma_noise": torch.ones((), device=device, dtype=dtype),
                "n_data": int(meta["n_data"]),
                "n_outputs": int(meta["n_outputs"]),
                "likelihood": "classification",
                "temperature": 1.0,
                "enable_backprop": False,
                "cls_name": "KronLaplace",
            }
        )
        return cls(model, network, laplace, meta["link_approx"], meta["prior_precision"]["method"])


def _laplace_tensors(laplace) -> tuple:
    tensors = {
        "mean": laplace.mean.detach().cpu().contiguous(),
        "prior_precision": laplace.prior_precision.detach().reshape(-1).cpu().contiguous(),
        "loss": torch.as_tensor(laplace.loss).detach().reshape(()).cpu(),
    }
    layout = []
    for i, factors in enumerate(laplace.H_facs.kfacs):
        layout.append(len(factors))
        for j, factor in enumerate(factors):
            tensors[f"kron.{i}.{j}"] = factor.detach().cpu().contiguous()
    return tensors, layout


def _read_files(directory: Path) -> tuple:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    json_path, tensor_path = directory / "laplace.json", directory / "laplace.safetensors"
    for path in (json_path, tensor_path):
        if not path.is_file():
            raise ValueError(f"{path}: no such file (a Laplace-LoRA posterior is laplace.json + laplace.safetensors)")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{json_path}: not readable JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format_version") != LAPLACE_FORMAT_VERSION:
        found = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(f"{json_path}: format_version must be {LAPLACE_FORMAT_VERSION}, got {found!r}")
    if meta.get("hessian_structure") not in HESSIAN_STRUCTURES:
        raise ValueError(
            f"{json_path}: hessian_structure must be one of {list(HESSIAN_STRUCTURES)}, "
            f"got {meta.get('hessian_structure')!r}"
        )
    if meta.get("link_approx") not in LINK_APPROXIMATIONS:
        raise ValueError(
            f"{json_path}: link_approx must be one of {list(LINK_APPROXIMATIONS)}, got {meta.get('link_approx')!r}"
        )
    raw = tensor_path.read_bytes()
    if hashlib.sha256(raw).hexdigest() != meta.get("tensors_sha256"):
        raise ValueError(f"{tensor_path}: its SHA-256 differs from the one {json_path.name} records")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{tensor_path}: not a readable safetensors file ({error})") from None
    return meta, tensors


def _check_matches(meta: dict, tensors: dict, network: AdapterNetwork, directory: Path) -> None:
    saved = [(p.get("name"), p.get("shape")) for p in meta.get("parameters", [])]
    current = [(n, list(p.shape)) for n, p in zip(network.parameter_names(), network.parameters())]
    if saved != current:
        missing = [n for n, _ in current if n not in dict(saved)]
        extra = [n for n, _ in saved if n not in dict(current)]
        detail = (
            f"missing {missing[:3]}, extra {extra[:3]}"
            if missing or extra
            else "the same names with other shapes or order"
        )
        raise ValueError(
            f"{directory / 'laplace.json'} covers other adapter parameters than this model's ({detail}); "
            "a Laplace-LoRA posterior loads only onto the LoRA checkpoint it was fitted on"
        )
    mean = torch.cat([p.detach().reshape(-1).cpu() for p in network.parameters()])
    stored = tensors.get("mean")
    if stored is None or stored.shape != mean.shape or not torch.equal(stored.to(mean.dtype), mean):
        raise ValueError(
            f"{directory / 'laplace.safetensors'} was fitted at other adapter values than this model's "
            "(a different LoRA checkpoint of the same shapes)"
        )
    expected = [f"kron.{i}.{j}" for i, count in enumerate(meta.get("kron_factors", [])) for j in range(count)]
    absent = [key for key in expected + ["prior_precision", "loss"] if key not in tensors]
    if absent or len(meta.get("kron_factors", [])) != len(current):
        raise ValueError(f"{directory / 'laplace.safetensors'} lacks tensors {absent[:3]} or factors")


def fit_laplace(
    model: MonteCLoRAModel,
    train_loader,
    prior_precision: Union[str, float] = "marglik",
    hessian_structure: str = "kron",
    link_approx: str = "mc",
    progress: bool = False,
) -> LaplaceLoRA:
    """Fit Laplace-LoRA post hoc on a trained LoRA classifier.

    :param MonteCLoRAModel model: a plain LoRA sequence classifier (``adapter_mode="mean"``); its
        adapters are the MAP. The model is not changed.
    :param train_loader: a ``DataLoader`` of training batches (dictionaries with ``labels``) whose
        ``dataset`` has a length :math:`N`: the KFAC factors sum over it.
    :param prior_precision: ``"marglik"`` (a scalar :math:`\\lambda` maximising the Laplace
        marginal likelihood on the training data, 100 Adam steps on :math:`\\log \\lambda` from 1,
        ``laplace-torch``'s defaults) or a positive float.
    :param str hessian_structure: ``"kron"`` (KFAC; the only one).
    :param str link_approx: the predictive's link approximation, ``"mc"`` or ``"probit"`` (see
        :func:`laplace_predict`).
    :param bool progress: show ``laplace-torch``'s progress bars.
    :raises ValueError: for a model Laplace-LoRA does not apply to, or a bad option.
    """
    check_lora_classifier(model)
    if hessian_structure not in HESSIAN_STRUCTURES:
        raise ValueError(f"hessian_structure must be one of {list(HESSIAN_STRUCTURES)}, got {hessian_structure!r}")
    if link_approx not in LINK_APPROXIMATIONS:
        raise ValueError(f"link_approx must be one of {list(LINK_APPROXIMATIONS)}, got {link_approx!r}")
    given = not isinstance(prior_precision, str)
    if prior_precision != "marglik" and not (
        given
        and isinstance(prior_precision, (int, float))
        and not isinstance(prior_precision, bool)
        and 0 < prior_precision < float("inf")
    ):
        raise ValueError(f"prior_precision must be 'marglik' or a positive finite number, got {prior_precision!r}")
    KronLaplace, CurvlinopsGGN = _laplace_classes()
    network = AdapterNetwork(model)
    laplace = KronLaplace(
        network,
        "classification",
        prior_precision=float(prior_precision) if given else 1.0,
        backend=CurvlinopsGGN,
    )
    with evaluation_mode(model), _quiet():
        laplace.fit(train_loader, progress_bar=progress)
        if not given:
            laplace.optimize_prior_precision(
                pred_type="glm",
                method="marglik",
                prior_structure="scalar",
                link_approx=link_approx,
                progress_bar=progress,
            )
    return LaplaceLoRA(model, network, laplace, link_approx, "given" if given else "marglik")


@torch.no_grad()
def _glm_in_chunks(la, inputs: dict, chunk_size: int):
    """``la._glm_predictive_distribution`` over ``inputs`` in slices of ``chunk_size`` rows: the
    Jacobian's memory grows much faster than linearly with the rows of one call (a 64-sentence
    MiniLM batch ran a 24 GiB machine out of memory, and per sentence slices of 2 ran 5x faster than
    slices of 8 and 13x faster than slices of 16, at under 1 GiB)."""
    rows = next(iter(inputs.values())).shape[0]
    means, variances = [], []
    for start in range(0, rows, chunk_size):
        part = {k: v[start : start + chunk_size] for k, v in inputs.items()}
        f_mu, f_var = la._glm_predictive_distribution(part)
        means.append(f_mu)
        variances.append(f_var)
    return torch.cat(means), torch.cat(variances)


def laplace_predict(
    laplace: LaplaceLoRA,
    loader: Iterable[dict],
    num_samples: int = 1000,
    seed: int = 0,
    device=None,
    progress: bool = False,
    chunk_size: int = 2,
) -> PredictiveOutput:
    """The linearised (GLM) Laplace predictive of a classifier over every batch of ``loader``.

    Per example the logits are :math:`f \\sim \\mathcal N(\\mu, \\Sigma)`, with :math:`\\mu` the
    LoRA model's logits and :math:`\\Sigma = J \\Sigma_\\theta J^\\top` (``laplace-torch``'s
    ``_glm_predictive_distribution``, the computation its ``__call__`` makes). From ``num_samples``
    draws :math:`f_s` (a ``torch.Generator`` seeded with ``seed``: the same call gives the same
    numbers), the expected entropy is :math:`\\frac1S\\sum_s H[\\operatorname{softmax} f_s]`, and

    * ``link_approx="mc"``: the probabilities are :math:`\\frac1S\\sum_s \\operatorname{softmax} f_s`
      (``laplace-torch``'s MC link), so predictive entropy = expected entropy + mutual information
      exactly as for MonteCLoRA's predictive;
    * ``link_approx="probit"``: the probabilities are the probit approximation
      :math:`\\operatorname{softmax}(\\mu / \\sqrt{1 + \\pi \\operatorname{diag}\\Sigma / 8})`; its
      entropy is the predictive entropy, and the mutual information is that minus the MC expected
      entropy, clamped at 0.

    Drawing logits is cheap beside the Jacobian (one backward pass per class), so :math:`S` can be
    large. The sums run in float64 and the results are float32, as :func:`~pyro_monteclora.predict`.

    :param int num_samples: :math:`S \\ge 1` logit draws per example.
    :param int chunk_size: rows per Jacobian computation (memory, not results, depends on it).
    :param device: where to run (default: where the adapters are; the model must already be there).
    """
    from laplace.utils import normal_samples

    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
    la = laplace.laplace
    device = la._device if device is None else torch.device(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    rows = {"probs": [], "predictive_entropy": [], "expected_entropy": [], "labels": []}
    with evaluation_mode(laplace.model), _quiet():
        for batch in progress_bar(loader, f"laplace predict S={num_samples}", progress):
            labels = batch.get("labels")
            inputs = move_batch({k: v for k, v in batch.items() if k not in _NON_INPUTS}, device)
            f_mu, f_var = _glm_in_chunks(la, inputs, chunk_size)
            draws = torch.softmax(normal_samples(f_mu, f_var, num_samples, generator), dim=-1).double()
            expected = entropy(draws).mean(0)
            if laplace.link_approx == "mc":
                probs = draws.mean(0)
            else:
                kappa = 1 / torch.sqrt(1.0 + torch.pi / 8 * f_var.diagonal(dim1=1, dim2=2))
                probs = torch.softmax(kappa * f_mu, dim=-1).double()
            rows["probs"].append(probs.cpu())
            rows["predictive_entropy"].append(entropy(probs).cpu())
            rows["expected_entropy"].append(expected.cpu())
            if labels is not None:
                rows["labels"].append(labels.cpu())
    if not rows["probs"]:
        raise ValueError("the Laplace predictive got an empty loader")
    out = {k: torch.cat(v) for k, v in rows.items() if v}
    mutual_information = (out["predictive_entropy"] - out["expected_entropy"]).clamp_min(0.0)
    return PredictiveOutput(
        probs=out["probs"].float(),
        predictive_entropy=out["predictive_entropy"].float(),
        expected_entropy=out["expected_entropy"].float(),
        mutual_information=mutual_information.float(),
        labels=out.get("labels"),
    )
