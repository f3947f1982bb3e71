"""Configuration of MonteCLoRA adapters.

:class:`MonteCLoRAConfig` plays the part of PEFT's ``LoraConfig``: it says which linear layers get an
adapter, the adapter's rank and scaling, and the hyper-parameters of the MonteCLoRA prior

.. math::

    \\Sigma_\\ell \\sim \\mathcal{W}(\\nu, I_r), \\qquad
    \\pi_\\ell \\sim \\operatorname{Dir}(\\alpha_0 \\mathbf{1}_N), \\qquad
    A_\\ell = M_\\ell + s \\sum_{k=1}^N \\pi_{\\ell k} E_{\\ell k},
    \\quad E_{\\ell k}[:, j] \\sim \\mathcal{N}(0, \\Sigma_\\ell).

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

__all__ = ["MonteCLoRAConfig"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(condition: bool, name: str, allowed: str, value: Any) -> None:
    if not condition:
        raise ValueError(f"MonteCLoRAConfig.{name} must be {allowed}, got {value!r}")


@dataclass
class MonteCLoRAConfig:
    """Hyper-parameters of MonteCLoRA adapters.

    :param int rank: LoRA rank :math:`r` (``>= 1``).
    :param float alpha: LoRA alpha; the update is scaled by :math:`\\gamma = \\alpha / r`.
    :param float dropout: dropout probability applied to the adapter's input, in ``[0, 1)``.
    :param target_modules: names of the ``nn.Linear`` modules to adapt. A list matches a module whose
        path equals a name or ends with ``"." + name`` (PEFT's rule); a string is a regular expression
        that must match the whole module path.
    :param modules_to_save: names of modules (for example the classification head) that are trained
        as point estimates; matched like ``target_modules`` lists.
    :param int num_components: number of mixture components :math:`N` (``>= 1``; the paper uses 4).
    :param float wishart_df: Wishart degrees of freedom :math:`\\nu > r - 1`; ``None`` means ``rank``.
    :param float sample_scaler: the sample scaler :math:`s \\ge 0` (paper: ``5e-3`` for encoders).
        ``0`` makes every sampled adapter the mean adapter (the predictive is LoRA's, the mutual
        information 0); a large ``s`` (``>= 1``) swamps :math:`M` with noise: the outputs stay
        finite (tested up to ``1e4``) but the adapters then carry little of what was learned. The demo's study found
        ``2e-2`` best for MiniLM at learning rate ``3e-3`` (see the README).
    :param float dirichlet_concentration: prior concentration :math:`\\alpha_0 > 0` of the mixture weights.
    :param float cooperative_weight: weight :math:`w \\ge 0` of the paper's cooperative term
        :math:`-w \\sum_k \\pi_k^2` added to the ELBO (0 keeps the true ELBO), once per random
        factor (per adapted layer, and per :math:`B` with ``random_B``), summed over them, neither
        scaled by the data plate nor annealed. The ELBO's likelihood is scaled to the whole data set
        (:math:`D/B`), so in :func:`~pyro_monteclora.train.fit`'s loss per example it weighs
        :math:`w / D`: a weight :math:`w'` in a loss per example
        (:math:`\\text{mean NLL} + w' \\sum_\\ell \\sum_k \\pi_{\\ell k}^2`) is ``cooperative_weight``
        :math:`= D w'` (see *The objective* in the docs' method page).
    :param float kl_weight: weight :math:`\\lambda \\ge 0` on the latent sites (1 is the true ELBO):
        the ELBO subtracts :math:`\\lambda \\sum_\\ell \\mathrm{KL}_\\ell`, summed over the random
        factors, from a likelihood scaled to the whole data set (:math:`D/B`), so per example the
        KL weighs :math:`\\lambda / D`. A weight :math:`\\lambda'` in a loss per example
        (:math:`\\text{mean NLL} + \\lambda' \\sum_\\ell \\mathrm{KL}_\\ell`) is ``kl_weight``
        :math:`= D \\lambda'`; the true ELBO is :math:`\\lambda' = 1 / D`.
    :param bool random_B: also make ``B`` random, with its own Wishart and Dirichlet (off in the paper).
    :param str bias: ``"none"`` (frozen biases, as PEFT's default) or ``"all"`` (train the biases of
        adapted layers as point estimates).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: Union[Sequence[str], str] = ("query", "value")
    modules_to_save: Sequence[str] = ()
    num_components: int = 4
    wishart_df: Optional[float] = None
    sample_scaler: float = 5e-3
    dirichlet_concentration: float = 1.0
    cooperative_weight: float = 0.0
    kl_weight: float = 1.0
    random_B: bool = False
    bias: str = "none"

    def __post_init__(self) -> None:
        _require(
            isinstance(self.rank, int) and not isinstance(self.rank, bool) and self.rank >= 1,
            "rank", "an integer >= 1", self.rank,
        )
        _require(_is_number(self.alpha) and math.isfinite(self.alpha) and self.alpha > 0,
                 "alpha", "a finite number > 0", self.alpha)
        _require(_is_number(self.dropout) and 0.0 <= self.dropout < 1.0,
                 "dropout", "a number in [0, 1)", self.dropout)
        _require(
            isinstance(self.num_components, int) and not isinstance(self.num_components, bool)
            and self.num_components >= 1,
            "num_components", "an integer >= 1", self.num_components,
        )
        if self.wishart_df is None:
            self.wishart_df = float(self.rank)
        _require(
            _is_number(self.wishart_df) and math.isfinite(self.wishart_df)
            and self.wishart_df > self.rank - 1,
            "wishart_df", f"a finite number > rank - 1 = {self.rank - 1}", self.wishart_df,
        )
        self.wishart_df = float(self.wishart_df)
        for name in ("sample_scaler", "cooperative_weight", "kl_weight"):
            value = getattr(self, name)
            _require(_is_number(value) and math.isfinite(value) and value >= 0,
                     name, "a finite number >= 0", value)
        _require(
            _is_number(self.dirichlet_concentration) and math.isfinite(self.dirichlet_concentration)
            and self.dirichlet_concentration > 0,
            "dirichlet_concentration", "a finite number > 0", self.dirichlet_concentration,
        )
        _require(isinstance(self.random_B, bool), "random_B", "True or False", self.random_B)
        _require(self.bias in ("none", "all"), "bias", "one of 'none', 'all'", self.bias)
        self.target_modules = self._check_names("target_modules", self.target_modules, allow_regex=True)
        self.modules_to_save = self._check_names("modules_to_save", self.modules_to_save, allow_regex=False)
        _require(
            not (isinstance(self.target_modules, tuple) and len(self.target_modules) == 0),
            "target_modules", "a non-empty list of module names or a regular expression",
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
        if isinstance(value, (list, tuple, set, frozenset)) and all(
            isinstance(item, str) and item for item in value
        ):
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
            raise ValueError(
                f"MonteCLoRAConfig got unknown fields {unknown}; allowed fields are {sorted(known)}"
            )
        return cls(**data)


def _matches(patterns: Union[Sequence[str], str], path: str) -> bool:
    if isinstance(patterns, str):
        return re.fullmatch(patterns, path) is not None
    return any(path == name or path.endswith("." + name) for name in patterns)
