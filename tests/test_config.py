"""MonteCLoRAConfig: defaults, matching rules, validation with messages that name the field."""

import dataclasses
import math

import pytest

from pyro_monteclora import MonteCLoRAConfig


def test_defaults_follow_the_paper():
    cfg = MonteCLoRAConfig()
    assert cfg.num_components == 4
    assert cfg.wishart_df == cfg.rank
    assert cfg.sample_scaler == 5e-3
    assert cfg.dirichlet_concentration == 1.0
    assert cfg.random_B is False
    assert cfg.scaling == cfg.alpha / cfg.rank


@pytest.mark.parametrize(
    "field,value",
    [
        ("rank", 0),
        ("rank", -3),
        ("rank", 2.5),
        ("rank", True),
        ("num_components", 0),
        ("alpha", 0),
        ("alpha", math.inf),
        ("dropout", 1.0),
        ("dropout", -0.1),
        ("sample_scaler", -1e-3),
        ("sample_scaler", math.nan),
        ("kl_weight", -1.0),
        ("cooperative_weight", -0.5),
        ("dirichlet_concentration", 0.0),
        ("bias", "lora_only"),
        ("target_modules", []),
        ("target_modules", "query("),
        ("target_modules", [""]),
        ("modules_to_save", [3]),
        ("random_B", "yes"),
        ("prior", "laplace"),
        ("prior", None),
        ("prior_std", 0.0),
        ("prior_std", -0.2),
        ("prior_std", math.nan),
        ("prior_std", math.inf),
        ("prior_std", "0.2"),
    ],
)
def test_bad_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MonteCLoRAConfig(**{field: value})


def test_the_prior_is_one_of_two_and_the_gaussian_has_no_cooperative_term():
    assert MonteCLoRAConfig().prior == "wishart-mixture" and MonteCLoRAConfig().prior_std == 0.2
    assert MonteCLoRAConfig(prior="gaussian", prior_std=0.05).prior_std == 0.05
    allowed = "one of 'wishart-mixture', 'gaussian'"
    with pytest.raises(ValueError, match=rf"^MonteCLoRAConfig.prior must be {allowed}, got 'normal'$"):
        MonteCLoRAConfig(prior="normal")
    with pytest.raises(ValueError, match=r"^MonteCLoRAConfig.prior_std must be a finite number > 0, got nan$"):
        MonteCLoRAConfig(prior="gaussian", prior_std=math.nan)
    with pytest.raises(ValueError, match=r"cooperative_weight must be 0 with prior='gaussian' .*, got 0.5$"):
        MonteCLoRAConfig(prior="gaussian", cooperative_weight=0.5)
    MonteCLoRAConfig(prior="wishart-mixture", cooperative_weight=0.5)


def test_df_must_exceed_rank_minus_one():
    MonteCLoRAConfig(rank=4, wishart_df=3.01)
    with pytest.raises(ValueError, match=r"wishart_df must be a finite number > rank - 1 = 3"):
        MonteCLoRAConfig(rank=4, wishart_df=3.0)


def test_target_matching_follows_peft():
    cfg = MonteCLoRAConfig(target_modules=["query", "value"])
    assert cfg.matches_target("bert.encoder.layer.0.attention.self.query")
    assert not cfg.matches_target("bert.encoder.layer.0.attention.self.query_proj")
    regex = MonteCLoRAConfig(target_modules=r".*layer\.1\..*(query|value)")
    assert regex.matches_target("bert.encoder.layer.1.attention.self.value")
    assert not regex.matches_target("bert.encoder.layer.0.attention.self.value")
    saved = MonteCLoRAConfig(modules_to_save=["classifier"])
    assert saved.matches_saved("classifier.dense") and not saved.matches_saved("bert.pooler.dense")


def test_round_trip_through_a_dict():
    cfg = MonteCLoRAConfig(rank=4, target_modules=["q_proj"], modules_to_save=["score"], random_B=True)
    assert MonteCLoRAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown fields"):
        MonteCLoRAConfig.from_dict({"rank": 4, "ranq": 2})


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(MonteCLoRAConfig)])
def test_a_validated_config_cannot_be_changed(field):
    """Frozen after validation: the model's sites, the guide and the batched KL read one set of values."""
    cfg = MonteCLoRAConfig(rank=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, field, getattr(cfg, field))
    assert cfg == MonteCLoRAConfig(rank=4)


def test_replace_makes_a_validated_copy():
    cfg = MonteCLoRAConfig(rank=4, target_modules=["query"])
    copy = dataclasses.replace(cfg, kl_weight=0.5, target_modules={"value", "key"})
    assert (copy.kl_weight, copy.target_modules, cfg.kl_weight) == (0.5, ("key", "value"), 1.0)
    assert dataclasses.replace(cfg, rank=16, wishart_df=None).wishart_df == 16.0
    with pytest.raises(ValueError, match=r"wishart_df must be a finite number > rank - 1 = 15, got 4.0"):
        dataclasses.replace(cfg, rank=16)  # the resolved df of rank 4 is kept
    with pytest.raises(ValueError, match="kl_weight"):
        dataclasses.replace(cfg, kl_weight=-1.0)


def test_every_field_carries_its_help_text_in_the_docstring():
    for field in dataclasses.fields(MonteCLoRAConfig):
        help_text = field.metadata["help"]
        assert help_text and "%" not in help_text  # argparse formats help with %
        assert f":param {field.name}: {help_text}; default ``{field.default!r}``." in MonteCLoRAConfig.__doc__
