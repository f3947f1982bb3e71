"""Configuration of MonteCLoRA adapters.

:class:`MonteCLoRAConfig` plays the part of PEFT's ``LoraConfig``: it says which linear layers get an
adapter, the adapter's rank and scaling, and the hyper-parameters of the MonteCLoRA prior

.. math::

    \\Sigma_\\ell \\sim \\mathcal{W}(\\nu, I_r), \\qquad
    \\pi_\\ell \\sim \\operatorname{Dir}(\\alpha_0 \\mathbf{1}_N), \\qquad
    A_\\ell = M_\\ell + s \\sum_{k=1}^N \\pi_{\\ell k} E_{\\ell k},
    \\quad E_{\\ell k}[:, j] \\sim \\mathcal{N}(0, \\Sigma_\\ell).

With ``prior="gaussian"`` the prior is instead BLoB's (Wang et al., NeurIPS 2024): every entry of
:math:`A_\\ell` is :math:`\\mathcal N(0, \\sigma_p^2)` with :math:`\\sigma_p` = ``prior_std``
(see :class:`~pyro_monteclora.nn.priors.GaussianPrior`).

Every field is validated on construction, so a bad value fails before a model is touched.

>>> cfg = MonteCLoRAConfig(rank=8, target_modules=["query", "value"])
>>> cfg.wishart_df, cfg.scaling
(8.0, 2.0)
>>> MonteCLoRAConfig(rank=0)
Traceback (most recent call last):
...
ValueError: MonteCLoRAConfig.rank must be an integer >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

from pyro_monteclora.validation import number_problem

__all__ = ["MonteCLoRAConfig", "BIAS_CHOICES", "PRIOR_CHOICES", "SITE_LAYOUTS"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(name: str, value: Any, **bounds) -> None:
    """The package's one rule for numbers (:func:`~pyro_monteclora.validation.number_problem`)."""
    problem = number_problem(value, **bounds)
    if problem:
        raise ValueError(f"MonteCLoRAConfig.{name} {problem}")


def _require(condition: bool, name: str, allowed: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"MonteCLoRAConfig.{name} must be {allowed}, got {value!r}")


#: the values of :attr:`MonteCLoRAConfig.bias`
BIAS_CHOICES = ("none", "all")
#: the values of :attr:`MonteCLoRAConfig.site_layout`: one set of Pyro sites per adapted layer, or one
#: per kind for all layers of one width (see :mod:`pyro_monteclora.nn.sites`)
SITE_LAYOUTS = ("per-layer", "stacked")
#: the values of :attr:`MonteCLoRAConfig.prior`: the paper's prior, and BLoB's per-entry Gaussian
PRIOR_CHOICES = ("wishart-mixture", "gaussian")


def _field(default: Any, help: str, **metadata: Any) -> Any:
    """A config field whose ``help`` is the one description of it: the class docstring's entry and
    the command line's help (:mod:`pyro_monteclora.cli.options`) are both made from it."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class MonteCLoRAConfig:
    """Hyper-parameters of MonteCLoRA adapters.

    The config is immutable once validated (a frozen dataclass): the model's sites, the guide and
    the batched KL all read the same values. :func:`dataclasses.replace` makes a validated copy
    with some fields changed; ``wishart_df`` holds its resolved value, so a copy with a new
    ``rank`` keeps the old degrees of freedom unless it is also given ``wishart_df=None``.

    >>> cfg = MonteCLoRAConfig(rank=4)
    >>> cfg.rank = 8
    Traceback (most recent call last):
    ...
    dataclasses.FrozenInstanceError: cannot assign to field 'rank'
    >>> dataclasses.replace(cfg, rank=8, wishart_df=None).wishart_df
    8.0

    **The weights per example.** The ELBO's likelihood is scaled to the whole data set
    (:math:`D/B` under the data plate), while the KL (weighted by ``kl_weight`` :math:`\\lambda`)
    and the cooperative term (``cooperative_weight`` :math:`w`, once per random factor, neither
    scaled by the plate nor annealed) are counted once, summed over the random factors. So in
    :func:`~pyro_monteclora.training.svi.fit`'s loss per example they weigh :math:`\\lambda / D` and
    :math:`w / D`: weights :math:`\\lambda'` and :math:`w'` of a loss per example
    (:math:`\\text{mean NLL} + \\lambda' \\sum_\\ell \\mathrm{KL}_\\ell + w' \\sum_\\ell \\sum_k \\pi_{\\ell k}^2`)
    are ``kl_weight`` :math:`= D \\lambda'` and ``cooperative_weight`` :math:`= D w'`; the true
    ELBO is :math:`\\lambda' = 1 / D` (see *The objective* in the docs' method page).

    Each field's description below is its ``metadata["help"]`` (also the command line's help):
    """

    rank: int = _field(8, "LoRA rank r of the adapters (an integer >= 1)")
    alpha: float = _field(16.0, "LoRA alpha; the adapter's update is scaled by alpha / r")
    dropout: float = _field(0.0, "dropout probability on the adapter's input, in [0, 1)")
    target_modules: Union[Sequence[str], str] = _field(
        ("query", "value"),
        "the linear layers to adapt: a list matches a module whose path equals a name or ends with "
        "'.' + name (PEFT's rule); a string is a regular expression matched against the whole path",
    )
    modules_to_save: Sequence[str] = _field(
        (),
        "modules (for example the classification head) trained as point estimates, matched like a target_modules list",
    )
    prior: str = _field(
        "wishart-mixture",
        "the prior of each random factor: 'wishart-mixture' (the paper's: a Wishart covariance and "
        "Dirichlet mixture weights, guided by MonteCLoRAGuide) or 'gaussian' (BLoB-style: each "
        "entry of A is N(0, prior_std^2), guided by the mean-field MeanFieldGuide)",
        choices=PRIOR_CHOICES,
    )
    prior_std: float = _field(
        0.2,
        "standard deviation sigma_p > 0 of the 'gaussian' prior on each entry of A (BLoB's 0.2); "
        "the wishart-mixture prior does not read it",
    )
    num_components: int = _field(4, "number N of mixture components (an integer >= 1; the paper uses 4)")
    wishart_df: Optional[float] = _field(
        None, "degrees of freedom nu > r - 1 of the Wishart prior on each covariance (None: the rank)"
    )
    sample_scaler: float = _field(
        5e-3,
        "the sample scaler s >= 0 (the paper's 5e-3 for encoders): 0 makes every sampled "
        "adapter the mean adapter (LoRA's predictive); a large s (>= 1) swamps the mean with "
        "noise. The demo's study found 2e-2 best for MiniLM at learning rate 3e-3",
    )
    dirichlet_concentration: float = _field(
        1.0, "prior concentration alpha_0 > 0 of the Dirichlet on the mixture weights"
    )
    cooperative_weight: float = _field(
        0.0, "weight w >= 0 of the paper's cooperative term -w sum_k pi_k^2 added to the ELBO (0 keeps the true ELBO)"
    )
    kl_weight: float = _field(1.0, "weight lambda >= 0 on the latent sites' KL terms (1 is the true ELBO)")
    random_B: bool = _field(False, "also make B random, with its own Wishart and Dirichlet (off in the paper)")
    site_layout: str = _field(
        "per-layer",
        "'per-layer' (each adapted layer emits its own named sites, <path>.covariance, ...) or 'stacked' "
        "(one covariance, mixture-weight and noise site per factor width for all layers, with the layer as an "
        "event dimension: Pyro's per-site work no longer grows with the number of layers; the per-layer "
        "values are rows of the stacked sites, see MonteCLoRAModel.site_index). The wishart-mixture prior only",
        choices=SITE_LAYOUTS,
    )
    bias: str = _field(
        "none",
        "'none' (frozen biases, PEFT's default) or 'all' (the biases of adapted layers trained as point estimates)",
        choices=BIAS_CHOICES,
    )

    def __post_init__(self) -> None:
        _number("rank", self.rank, minimum=1, integer=True)
        _number("alpha", self.alpha, minimum=0, exclusive_minimum=True)
        _require(_is_number(self.dropout) and 0.0 <= self.dropout < 1.0, "dropout", "a number in [0, 1)", self.dropout)
        _number("num_components", self.num_components, minimum=1, integer=True)
        # normalised values are set with object.__setattr__: the dataclass is frozen
        if self.wishart_df is None:
            object.__setattr__(self, "wishart_df", float(self.rank))
        _require(
            _is_number(self.wishart_df) and math.isfinite(self.wishart_df) and self.wishart_df > self.rank - 1,
            "wishart_df",
            f"a finite number > rank - 1 = {self.rank - 1}",
            self.wishart_df,
        )
        object.__setattr__(self, "wishart_df", float(self.wishart_df))
        for name in ("sample_scaler", "cooperative_weight", "kl_weight"):
            _number(name, getattr(self, name), minimum=0)
        _number("dirichlet_concentration", self.dirichlet_concentration, minimum=0, exclusive_minimum=True)
        _require(
            isinstance(self.prior, str) and self.prior in PRIOR_CHOICES,
            "prior",
            "one of " + ", ".join(repr(choice) for choice in PRIOR_CHOICES),
            self.prior,
        )
        _number("prior_std", self.prior_std, minimum=0, exclusive_minimum=True)
        _require(
            self.prior != "gaussian" or self.cooperative_weight == 0,
            "cooperative_weight",
            "0 with prior='gaussian' (the cooperative term acts on the wishart-mixture prior's mixture weights)",
            self.cooperative_weight,
        )
        _require(isinstance(self.random_B, bool), "random_B", "True or False", self.random_B)
        _require(
            self.site_layout in SITE_LAYOUTS,
            "site_layout",
            "one of " + ", ".join(repr(choice) for choice in SITE_LAYOUTS),
            self.site_layout,
        )
        _require(
            self.site_layout == "per-layer" or self.prior == "wishart-mixture",
            "site_layout",
            "'per-layer' with prior='gaussian' (the stacked layout covers the wishart-mixture prior's sites)",
            self.site_layout,
        )
        _require(
            self.bias in BIAS_CHOICES, "bias", "one of " + ", ".join(repr(choice) for choice in BIAS_CHOICES), self.bias
        )
        object.__setattr__(
            self, "target_modules", self._check_names("target_modules", self.target_modules, allow_regex=True)
        )
        object.__setattr__(
            self, "modules_to_save", self._check_names("modules_to_save", self.modules_to_save, allow_regex=False)
        )
        _require(
            not (isinstance(self.target_modules, tuple) and len(self.target_modules) == 0),
            "target_modules",
            "a non-empty list of module names or a regular expression",
            self.target_modules,
        )

    @staticmethod
    def _check_names(name: str, value: Any, allow_regex: bool) -> Union[tuple, str]:
        if isinstance(value, str):
            if not allow_regex:
                return (value,)
            try:
                re.compile(value)
            except re.error as error:
                raise ValueError(
                    f"MonteCLoRAConfig.{name} must be a list of module names or a valid regular "
                    f"expression, got {value!r} ({error})"
                ) from None
            return value
        if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(item, str) and item for item in value):
            return tuple(sorted(value)) if isinstance(value, (set, frozenset)) else tuple(value)
        raise ValueError(
            f"MonteCLoRAConfig.{name} must be a list of non-empty module names"
            + (" or a regular expression" if allow_regex else "")
            + f", got {value!r}"
        )

    @property
    def scaling(self) -> float:
        """The LoRA scaling :math:`\\gamma = \\alpha / r`."""
        return self.alpha / self.rank

    def matches_target(self, path: str) -> bool:
        """Whether the module at ``path`` gets an adapter (PEFT's matching rule)."""
        return _matches(self.target_modules, path)

    def matches_saved(self, path: str) -> bool:
        """Whether the module at ``path`` (or a parent of it) is trained as a point estimate."""
        parts = path.split(".")
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        return any(_matches(self.modules_to_save, prefix) for prefix in prefixes)

    def to_dict(self) -> dict:
        """A JSON-serialisable dictionary; :meth:`from_dict` inverts it."""
        data = dataclasses.asdict(self)
        if isinstance(self.target_modules, tuple):
            data["target_modules"] = list(self.target_modules)
        data["modules_to_save"] = list(self.modules_to_save)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "MonteCLoRAConfig":
        """Build a config from :meth:`to_dict`'s output; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"MonteCLoRAConfig got unknown fields {unknown}; allowed fields are {sorted(known)}")
        return cls(**data)


def _document_fields(cls) -> None:
    """Append a ``:param:`` entry per field, made from its ``metadata["help"]``, to the docstring."""
    lines = [
        f"    :param {field.name}: {field.metadata['help']}; default ``{field.default!r}``."
        for field in dataclasses.fields(cls)
    ]
    cls.__doc__ = cls.__doc__.rstrip() + "\n\n" + "\n".join(lines) + "\n"


_document_fields(MonteCLoRAConfig)


def _matches(patterns: Union[Sequence[str], str], path: str) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, path) is not None
    return any(path == name or path.endswith("." + name) for name in patterns)
