"""Search spaces: YAML -> Optuna distributions, conditions, and load-time validation."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from aullm_core.config import ExperimentConfig, config_keys
from aullm_core.errors import ConfigError
from orchestration.search.space import load_space, space_from_dict

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"

GOOD = {
    "base": "quick",
    "fixed": {"train.epochs": 3},
    "params": {
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "model.use_llm": {"type": "categorical", "choices": [True, False]},
        "model.lora.r": {"type": "int", "low": 2, "high": 16, "step": 2, "when": {"model.use_llm": True}},
        "model.lora.targets": {
            "type": "categorical",
            "choices": [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "o_proj"]],
            "when": {"model.use_llm": True},
        },
    },
}


def _study(seed: int = 0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))


def test_distributions_follow_the_yaml():
    space = space_from_dict(GOOD)
    dists = {p.key: p.distribution for p in space.params}
    assert dists["train.lr"] == FloatDistribution(1e-4, 1e-2, log=True)
    assert dists["model.lora.r"] == IntDistribution(2, 16, step=2)
    assert isinstance(dists["model.lora.targets"], CategoricalDistribution)
    assert [p.key for p in space.params] == list(GOOD["params"])  # YAML order = sampling order


def test_samples_respect_bounds_conditions_and_build_valid_configs():
    space = space_from_dict(GOOD)
    study = _study()
    seen_llm = set()
    for _ in range(40):
        trial = study.ask()
        overrides = space.sample(trial)
        config = space.build(overrides)
        assert isinstance(config, ExperimentConfig)
        assert config.train.epochs == 3  # fixed
        assert 1e-4 <= config.train.lr <= 1e-2
        seen_llm.add(config.model.use_llm)
        if config.model.use_llm:
            assert config.model.lora.r in range(2, 17, 2)
            assert config.model.lora.targets in (("q_proj", "v_proj"), ("q_proj", "k_proj", "v_proj", "o_proj"))
        else:
            # inactive: not sampled, keeps the preset's value
            assert "model.lora.r" not in trial.params and "model.lora.r" not in overrides
            assert config.model.lora.r == ExperimentConfig.preset("quick").model.lora.r
        # decoding Optuna's stored params gives back the same overrides (resume path)
        assert space.decode(trial.params) == overrides
        study.tell(trial, 0.0)
    assert seen_llm == {True, False}


def test_condition_on_a_fixed_key():
    data = {
        "base": "quick",
        "fixed": {"model.use_llm": False},
        "params": {
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-3},
            "model.lora.r": {"type": "int", "low": 2, "high": 8, "when": {"model.use_llm": True}},
        },
    }
    space = space_from_dict(data)
    study = _study()
    for _ in range(5):
        assert set(space.sample(study.ask())) == {"train.lr"}


def test_shipped_spaces_load():
    names = sorted(p.name for p in SPACES.glob("*.yaml"))
    assert {"quick.yaml", "paper.yaml", "wide.yaml"} <= set(names)
    for path in SPACES.glob("*.yaml"):
        space = load_space(path)
        space.check_inner_thresholds()  # the default objective uses inner thresholds
        space.build(space.sample(_study().ask()))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"params": {"train.lrr": {"type": "float", "low": 0.1, "high": 0.2}}}, "unknown configuration key 'train.lrr' (did you mean 'train.lr'?)"),
        ({"params": {"train.lr": {"type": "float", "low": 0.2, "high": 0.1}}}, "params.train.lr: low must be <= high"),
        ({"params": {"train.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "params.train.lr: a log scale needs low > 0"),
        ({"params": {"train.lr": {"type": "gaussian", "low": 0.0, "high": 0.1}}}, "params.train.lr: 'type' must be float"),
        ({"params": {"train.lr": {"type": "float", "low": "a", "high": 0.1}}}, "params.train.lr: 'low' must be a number"),
        ({"params": {"train.epochs": {"type": "int", "low": 1.5, "high": 3}}}, "params.train.epochs: 'low' must be an integer"),
        ({"params": {"train.lr": {"type": "float", "low": 0.1, "high": 0.2, "scale": 1}}}, "unexpected field(s) ['scale']"),
        ({"params": {"model.dropout": {"type": "float", "low": 0.1, "high": 1.5}}}, "params.model.dropout: value 1.5 is not valid"),
        ({"params": {"train.loss": {"type": "categorical", "choices": ["faithful", "hinge"]}}}, "params.train.loss: value 'hinge' is not valid"),
        ({"params": {"train.loss": {"type": "categorical", "choices": []}}}, "params.train.loss: 'choices' must be a non-empty list"),
        ({"params": {"train.epochs": {"type": "int", "low": 0, "high": 3}}}, "params.train.epochs: value 0 is not valid"),
        ({"fixed": {"train.epochs": 3}, "params": {"train.epochs": {"type": "int", "low": 1, "high": 3}}}, "both fixed and searched"),
        ({"fixed": {"train.nope": 3}}, "fixed: unknown configuration key 'train.nope'"),
        ({"fixed": {"train.lr": -1}}, "fixed: train.lr"),
        ({"base": "huge"}, "base: expected one of ['paper', 'quick']"),
        ({"extras": 1}, "unexpected top-level key(s) ['extras']"),
        ({"params": {"model.lora.r": {"type": "int", "low": 2, "high": 4, "when": {"model.use_lm": True}}}}, "params.model.lora.r.when: unknown configuration key 'model.use_lm'"),
        ({"params": {"model.lora.r": {"type": "int", "low": 2, "high": 4, "when": {"model.use_llm": True}}, "model.use_llm": {"type": "categorical", "choices": [True, False]}}}, "listed after this parameter"),
        ({"params": {"model.lora": {"type": "int", "low": 2, "high": 4}}}, "unknown configuration key 'model.lora'"),
        ({"params": {}}, "params: expected a non-empty mapping"),
    ],
)
def test_bad_spaces_fail_with_one_line_naming_the_key(change, needle, tmp_path):
    data = {"base": "quick", "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}}
    data.update(change)
    with pytest.raises(ConfigError) as info:
        space_from_dict(data, source="space.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("space.yaml: ")
    assert needle in message


def test_yaml_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("base: quick\nparams:\n  train.lr: {type: float, low: 1\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line \d+"):
        load_space(path)
    with pytest.raises(ConfigError, match="missing.yaml: search space file not found"):
        load_space(tmp_path / "missing.yaml")


def test_inner_threshold_objective_needs_inner_subjects():
    data = {"base": "quick", "fixed": {"train.inner_val_share": 0.0},
            "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}}
    with pytest.raises(ConfigError, match="train.inner_val_share is 0"):
        space_from_dict(data).check_inner_thresholds()
    data = {"base": "quick", "params": {"train.inner_val_share": {"type": "float", "low": 0.0, "high": 0.3}}}
    with pytest.raises(ConfigError, match="every value must be > 0"):
        space_from_dict(data).check_inner_thresholds()


def test_config_keys_are_the_leaves_of_experiment_config():
    keys = config_keys()
    assert "train.lr" in keys and "model.lora.r" in keys and "data.n_frames" in keys
    assert "model.lora" not in keys and "train" not in keys
    config = ExperimentConfig()
    for key in keys:  # every listed key is settable through with_overrides
        node = config
        for part in key.split("."):
            node = getattr(node, part)
        config.with_overrides({key: node})


def test_start_with_paper_gives_the_paper_value_of_every_searched_key():
    data = {
        "base": "quick",
        "start_with": "paper",
        "params": {
            "train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
            "train.batch_size": {"type": "categorical", "choices": [16, 256]},
            "model.lora.targets": {"type": "categorical", "choices": [["q_proj"], ["q_proj", "v_proj"]]},
        },
    }
    space = space_from_dict(data)
    start = space.start_params()
    paper = ExperimentConfig.preset("paper")
    study = _study()
    study.enqueue_trial(start)
    config = space.build(space.sample(study.ask()))
    assert config.train.lr == paper.train.lr == 3e-5
    assert config.train.batch_size == paper.train.batch_size == 256
    assert config.model.lora.targets == paper.model.lora.targets
    assert config.train.epochs == ExperimentConfig.preset("quick").train.epochs  # unsearched: the base's
    assert space_from_dict({k: v for k, v in data.items() if k != "start_with"}).start_params() is None


def test_start_with_paper_refuses_a_range_without_the_paper_value():
    data = {"base": "quick", "start_with": "paper", "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}}
    with pytest.raises(ConfigError, match=r"params.train.lr does not contain the paper's value 3e-05"):
        space_from_dict(data, source="s.yaml")
    with pytest.raises(ConfigError, match="start_with: expected one of"):
        space_from_dict({**data, "start_with": "best"}, source="s.yaml")
    wide = {**data, "params": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-4}}}
    with pytest.raises(ConfigError, match=r"start_with: quick: params.train.lr does not contain the quick preset's "
                                          r"value 0.0003"):
        space_from_dict({**wide, "start_with": ["paper", "quick"]}, source="s.yaml")
    with pytest.raises(ConfigError, match="each once"):
        space_from_dict({**wide, "start_with": ["paper", "paper"]}, source="s.yaml")


def test_start_with_a_list_begins_with_each_preset_in_order_labelled():
    space = space_from_dict({
        "base": "quick", "start_with": ["paper", "quick"],
        "params": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                   "train.batch_size": {"type": "categorical", "choices": [16, 256]}},
    })
    (first, paper), (second, quick) = space.starts()
    assert (first, second) == ("paper defaults", "quick preset")
    for params, preset in ((paper, ExperimentConfig.preset("paper")), (quick, ExperimentConfig.preset("quick"))):
        config = space.build(space.decode(params))
        assert (config.train.lr, config.train.batch_size) == (preset.train.lr, preset.train.batch_size)
    assert space.start_params() == paper


def test_shipped_quick_space_starts_from_the_paper_then_the_quick_preset():
    space = load_space(SPACES / "quick.yaml")
    assert space.start_with == ("paper", "quick")
    assert space.build(space.decode(space.start_params())).train.lr == 3e-5
    assert space.build(space.decode(space.starts()[1][1])).train.lr == ExperimentConfig.preset("quick").train.lr


def test_a_key_named_twice_in_the_yaml_is_refused_with_its_line(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(
        "base: quick\n"
        "params:\n"
        "  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "  train.lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n"
    )
    with pytest.raises(ConfigError, match=r"dup.yaml: not valid YAML at line 4: duplicate key 'train.lr'"):
        load_space(path)
