"""Every MonteCLoRAConfig field is an option of ``train`` and ``sweep``: parsed into the config,
validated by the config's own rules (the message names the option), recorded in ``run.json`` and
given back by ``--resume``."""

import dataclasses
import json
import re

import pytest
from test_cli import data_dir, model_dir, train_args  # noqa: F401 (module fixtures)

from pyro_monteclora import MonteCLoRAConfig
from pyro_monteclora.cli import build_parser, main
from pyro_monteclora.cli.options import adapter_config
from pyro_monteclora.cli.sweep import _forward, train_forwarded

#: field -> (command-line words, the value the config then holds); every field must be here
VALUES = {
    "rank": (["--rank", "4"], 4),
    "alpha": (["--alpha", "8"], 8.0),
    "dropout": (["--lora-dropout", "0.1"], 0.1),
    "target_modules": (["--target-modules", "query, key"], ("query", "key")),
    "modules_to_save": (["--modules-to-save", "pooler"], ("pooler",)),
    # the default: the cooperative weight below is refused with the Gaussian prior (tested below)
    "prior": (["--prior", "wishart-mixture"], "wishart-mixture"),
    "prior_std": (["--prior-std", "0.3"], 0.3),
    "num_components": (["--num-components", "3"], 3),
    "wishart_df": (["--wishart-df", "6.5"], 6.5),
    "sample_scaler": (["--sample-scaler", "0.02"], 0.02),
    "dirichlet_concentration": (["--dirichlet-concentration", "0.5"], 0.5),
    "cooperative_weight": (["--cooperative-weight", "0.1"], 0.1),
    "kl_weight": (["--kl-weight", "0.25"], 0.25),
    "random_B": (["--random-B"], True),
    "site_layout": (["--site-layout", "stacked"], "stacked"),
    "bias": (["--bias", "all"], "all"),
}
FIELDS = [field.name for field in dataclasses.fields(MonteCLoRAConfig)]
ARGV = [word for name in FIELDS for word in VALUES[name][0]]


def subcommand(name):
    parser = build_parser()
    return next(action for action in parser._actions if action.dest == "command").choices[name]


def test_every_config_field_is_a_train_option_parsed_into_the_config():
    assert sorted(VALUES) == sorted(FIELDS)  # a new field needs a row (and gets its option for free)
    squeezed = re.sub(r"\s+", "", subcommand("train").format_help())
    for field in dataclasses.fields(MonteCLoRAConfig):
        assert VALUES[field.name][0][0] in squeezed
        if field.name not in ("target_modules", "modules_to_save"):  # the CLI says how it defaults them
            assert re.sub(r"\s+", "", field.metadata["help"]) in squeezed, field.name
    config = adapter_config(vars(build_parser().parse_args(["train", "--output", "x", *ARGV])))
    assert {name: getattr(config, name) for name in FIELDS} == {name: VALUES[name][1] for name in FIELDS}
    # without options: the config's own defaults (the layers to adapt then come from the model type)
    default = adapter_config(vars(build_parser().parse_args(["train", "--output", "x"])))
    assert default == MonteCLoRAConfig()
    assert build_parser().parse_args(["train", "--output", "x", "--random-b"]).random_B is True
    gaussian = adapter_config(vars(build_parser().parse_args(["train", "--output", "x", "--prior", "gaussian"])))
    assert (gaussian.prior, gaussian.prior_std) == ("gaussian", 0.2)


def test_the_sweep_takes_the_same_options_and_passes_them_to_every_cell():
    args = build_parser().parse_args(["sweep", "--output", "x", *ARGV, "--epochs", "2", "--seeds", "0,1"])
    forwarded = train_forwarded(args.sweep_actions)
    assert set(forwarded) >= {
        "model",
        "task",
        "train_file",
        "max_length",
        "epochs",
        "lora_dropout",
        "wishart_df",
        "random_B",
        "gradient_checkpointing",
    }
    assert not set(forwarded) & {"output", "overwrite", "resume", "seeds", "num_samples", "split"}
    cell = build_parser().parse_args(["train", *_forward(args.sweep_actions, args, forwarded), "--output", "y"])
    assert cell.epochs == 2
    assert adapter_config(vars(cell)) == adapter_config(vars(args))


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--wishart-df", "2"], "--wishart-df must be a finite number > rank - 1 = 3, got 2.0"),
        (["--dirichlet-concentration", "0"], "--dirichlet-concentration must be a finite number > 0, got 0.0"),
        (["--cooperative-weight", "-1"], "--cooperative-weight must be a finite number >= 0, got -1.0"),
        (["--lora-dropout", "1"], "--lora-dropout must be a number in [0, 1), got 1.0"),
        (["--bias", "lora_only"], "argument --bias: invalid choice: 'lora_only' (choose from"),
        (["--prior", "laplace"], "argument --prior: invalid choice: 'laplace' (choose from"),
        (["--prior-std", "0"], "--prior-std must be a finite number > 0, got 0.0"),
        (["--prior-std", "nan"], "--prior-std must be a finite number > 0, got nan"),
        (
            ["--prior", "gaussian", "--cooperative-weight", "0.1"],
            "--cooperative-weight must be 0 with prior='gaussian'",
        ),
        (
            ["--target-modules", " , "],
            "--target-modules must be a non-empty list of module names or a regular expression, got ()",
        ),
        (
            ["--modules-to-save", "pooler,heads"],
            "--modules-to-save: heads matches no module of BertForSequenceClassification",
        ),
        (
            ["--target-modules", "q_proj"],
            "--target-modules=('q_proj',) matches no linear layer of BertForSequenceClassification",
        ),
    ],
)
def test_a_bad_prior_option_is_one_line_naming_it(model_dir, data_dir, tmp_path, capsys, extra, message):  # noqa: F811
    output = tmp_path / "run"
    assert main(train_args(model_dir, data_dir, output, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pyro-monteclora train: error: ") and "\n" not in err, err
    assert message in err, err
    assert not output.exists()


def test_prior_options_are_recorded_and_resume_gives_them_back(model_dir, data_dir, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    prior = [
        "--target-modules",
        "query,key,value",
        "--modules-to-save",
        "pooler",
        "--num-components",
        "2",
        "--wishart-df",
        "6",
        "--dirichlet-concentration",
        "0.5",
        "--cooperative-weight",
        "0.1",
        "--kl-weight",
        "0.5",
        "--random-B",
        "--bias",
        "all",
        "--lora-dropout",
        "0.05",
    ]
    assert main(train_args(model_dir, data_dir, run, "--epochs", "1", "--no-validation", *prior)) == 0
    arguments = json.loads((run / "run.json").read_text())["arguments"]
    assert {
        name: arguments[name]
        for name in (
            "target_modules",
            "modules_to_save",
            "num_components",
            "wishart_df",
            "dirichlet_concentration",
            "cooperative_weight",
            "kl_weight",
            "random_B",
            "bias",
            "lora_dropout",
        )
    } == {
        "target_modules": "query,key,value",
        "modules_to_save": "pooler",
        "num_components": 2,
        "wishart_df": 6.0,
        "dirichlet_concentration": 0.5,
        "cooperative_weight": 0.1,
        "kl_weight": 0.5,
        "random_B": True,
        "bias": "all",
        "lora_dropout": 0.05,
    }
    saved = json.loads((run / "checkpoint" / "monteclora_config.json").read_text())["config"]
    assert MonteCLoRAConfig.from_dict(saved) == MonteCLoRAConfig(
        rank=4,
        dropout=0.05,
        target_modules=["query", "key", "value"],
        modules_to_save=["classifier", "pooler"],
        num_components=2,
        wishart_df=6.0,
        dirichlet_concentration=0.5,
        cooperative_weight=0.1,
        kl_weight=0.5,
        random_B=True,
        bias="all",
    )
    # the recorded values are the run's: giving them again is no change, another value is refused
    assert main(["train", "--output", str(run), "--resume", *prior]) == 0
    capsys.readouterr()
    assert main(["train", "--output", str(run), "--resume", "--dirichlet-concentration", "2"]) == 2
    assert "cannot change --dirichlet-concentration" in capsys.readouterr().err
