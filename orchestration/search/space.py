"""Search spaces: YAML files mapping ``ExperimentConfig`` dotted keys to Optuna distributions.

A space names a base preset, fixed overrides and searched parameters::

    base: quick                  # ExperimentConfig.preset(...)
    fixed:                       # dotted key -> value, applied to every configuration
      train.epochs: 5
    params:                      # sampled in this order (define-by-run)
      train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.use_llm: {type: categorical, choices: [true, false]}
      model.lora.r: {type: int, low: 2, high: 16, step: 2, when: {model.use_llm: true}}
      model.lora.targets: {type: categorical, choices: [[q_proj, v_proj], [q_proj, k_proj, v_proj, o_proj]]}

``when`` makes a parameter conditional: it is sampled only when every named key has the given
value (or one of a list of values); otherwise the key keeps its base/fixed value. A condition may
name a parameter listed earlier or any fixed/base key. Every key is checked against
``ExperimentConfig`` and every bound or choice is checked by building the configuration, so a bad
space fails on load with a ``ConfigError`` naming the file and the key.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import ValidationError

from aullm_core.config import ExperimentConfig, config_keys, dotted_get
from aullm_core.errors import ConfigError
from aullm_core.model.llm_source import TINY, resolve_model, resolve_source
from orchestration.search.yaml_file import read_yaml

logger = logging.getLogger(__name__)

__all__ = ["Param", "SearchSpace", "load_space", "space_from_dict"]

_TOP_KEYS = {"base", "fixed", "params", "description", "start_with"}
_PRESETS = ("paper", "quick")
PAPER_DEFAULTS = "paper defaults"
#: ``start_with``: preset -> the label of the configuration that takes that preset's value of every
#: searched key (the first configurations of a sweep, in the order listed).
START_LABELS = {"paper": PAPER_DEFAULTS, "quick": "quick preset"}
_PARAM_KEYS = {
    "float": {"type", "low", "high", "log", "step", "when"},
    "int": {"type", "low", "high", "log", "step", "when"},
    "categorical": {"type", "choices", "when"},
}
_Primitive = (type(None), bool, int, float, str)


def _validation_message(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    return f"{where}: {first['msg']}" if where else first["msg"]


@dataclass(frozen=True)
class Param:
    """One searched key: its Optuna distribution and the condition under which it is sampled."""

    key: str
    kind: str  # 'float', 'int' or 'categorical'
    distribution: BaseDistribution
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    decoded: dict[Any, Any] = field(default_factory=dict)  # Optuna choice -> YAML value (lists)

    def decode(self, raw: Any) -> Any:
        """The configuration value for a value Optuna returned."""
        return self.decoded.get(raw, raw) if self.kind == "categorical" else raw

    def encode(self, value: Any) -> Any:
        """The Optuna value for a configuration value (inverse of ``decode``)."""
        if self.kind != "categorical":
            return value
        for raw, decoded in self.decoded.items():
            if decoded == value or (isinstance(value, tuple) and decoded == list(value)):
                return raw
        return value

    def contains(self, value: Any) -> bool:
        """Whether the configuration value ``value`` lies in this parameter's distribution."""
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return self.encode(value) in dist.choices
        assert isinstance(dist, (FloatDistribution, IntDistribution))
        return dist.low <= value <= dist.high

    def candidates(self) -> list[Any]:
        """Values that exercise the whole range: the bounds, or every choice."""
        dist = self.distribution
        if isinstance(dist, CategoricalDistribution):
            return [self.decode(c) for c in dist.choices]
        assert isinstance(dist, (FloatDistribution, IntDistribution))
        return [dist.low, dist.high]

    def suggest(self, trial: optuna.Trial) -> Any:
        dist = self.distribution
        if isinstance(dist, FloatDistribution):
            raw = trial.suggest_float(self.key, dist.low, dist.high, log=dist.log, step=dist.step)
        elif isinstance(dist, IntDistribution):
            raw = trial.suggest_int(self.key, dist.low, dist.high, log=dist.log, step=dist.step)
        else:
            assert isinstance(dist, CategoricalDistribution)
            raw = trial.suggest_categorical(self.key, dist.choices)
        return self.decode(raw)


@dataclass
class SearchSpace:
    """A validated search space; ``sample`` draws overrides, ``build`` makes the configuration."""

    base: str
    fixed: dict[str, Any]
    params: list[Param]
    source: str = "<space>"
    raw: dict[str, Any] = field(default_factory=dict)
    start_with: tuple[str, ...] = ()

    @property
    def base_config(self) -> ExperimentConfig:
        """The preset with the fixed overrides applied (what unsampled keys hold)."""
        return ExperimentConfig.preset(self.base).with_overrides(self.fixed)  # type: ignore[arg-type]

    def active(self, param: Param, values: dict[str, Any], static: ExperimentConfig) -> bool:
        """Whether ``param``'s condition holds given the values sampled so far."""
        for key, allowed in param.when.items():
            current = values[key] if key in values else dotted_get(static, key)
            if current not in allowed:
                return False
        return True

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask ``trial`` for every active parameter; returns dotted overrides (sampled keys only)."""
        static = self.base_config
        values: dict[str, Any] = {}
        for param in self.params:
            if self.active(param, values, static):
                values[param.key] = param.suggest(trial)
        return values

    def starts(self) -> list[tuple[str, dict[str, Any]]]:
        """(label, Optuna params) of the configurations a sweep begins with (``start_with``), in order.

        Each takes its preset's value for every searched key (``paper``: method.md section 4;
        ``quick``: the laptop recipe); the keys the space fixes keep their fixed values.
        """
        return [(START_LABELS[name], self._preset_params(name)) for name in self.start_with]

    def start_params(self) -> dict[str, Any] | None:
        """Optuna params of the first configuration (``start_with``'s first preset), or None."""
        starts = self.starts()
        return starts[0][1] if starts else None

    def _preset_params(self, name: str) -> dict[str, Any]:
        preset = ExperimentConfig.preset(name)  # type: ignore[arg-type]
        static = self.base_config
        values: dict[str, Any] = {}
        raw: dict[str, Any] = {}
        for param in self.params:
            if self.active(param, values, static):
                values[param.key] = dotted_get(preset, param.key)
                raw[param.key] = param.encode(values[param.key])
        return raw

    def decode(self, optuna_params: dict[str, Any]) -> dict[str, Any]:
        """Overrides from a finished Optuna trial's ``params`` (to adopt a trial on resume)."""
        by_key = {p.key: p for p in self.params}
        return {k: by_key[k].decode(v) for k, v in optuna_params.items() if k in by_key}

    def build(self, overrides: dict[str, Any], *, resolve: bool = True) -> ExperimentConfig:
        """Base preset + fixed + ``overrides``, validated; ConfigError names the bad key. With ``resolve``,
        a checkpoint's ``model.llm`` becomes its folder and ``model.llm_id`` its content identity (read
        from disk: the fingerprint is the content's, not the path's)."""
        merged = {**self.fixed, **overrides}
        try:
            config = ExperimentConfig.preset(self.base).with_overrides(merged)  # type: ignore[arg-type]
        except ValidationError as err:
            raise ConfigError(f"{self.source}: {_validation_message(err)} (overrides {merged})") from None
        except ValueError as err:
            raise ConfigError(f"{self.source}: {err}") from None
        return config.model_copy(update={"model": resolve_model(config.model)}) if resolve else config

    def llm_choices(self) -> list[str]:
        """Every ``model.llm`` a configuration of this space can have."""
        for param in self.params:
            if param.key == "model.llm":
                return [str(v) for v in param.candidates()]
        return [self.base_config.model.llm]

    def with_llm_folders(self) -> SearchSpace:
        """This space with each checkpoint in ``model.llm`` (fixed or choices) as its absolute folder
        (relative paths, Hugging Face cache folders and hub ids resolved here, on the driver)."""
        if not self.raw:
            return self
        raw = json.loads(json.dumps(self.raw))

        def folder(value: Any) -> Any:
            return value if not isinstance(value, str) or value == TINY else str(resolve_source(value))

        fixed = raw.get("fixed") or {}
        if "model.llm" in fixed:
            fixed["model.llm"] = folder(fixed["model.llm"])
        spec = (raw.get("params") or {}).get("model.llm")
        if isinstance(spec, dict) and isinstance(spec.get("choices"), list):
            spec["choices"] = [folder(c) for c in spec["choices"]]
        return self if raw == self.raw else space_from_dict(raw, self.source)

    def check_inner_thresholds(self) -> None:
        """Fail unless every configuration holds out inner subjects (train.inner_val_share > 0)."""
        key = "train.inner_val_share"
        for param in self.params:
            if param.key == key and any(v <= 0 for v in param.candidates()):
                raise ConfigError(
                    f"{self.source}: params.{key}: the objective uses inner thresholds, so every "
                    "value must be > 0"
                )
        if key not in {p.key for p in self.params} and self.base_config.train.inner_val_share <= 0:
            raise ConfigError(
                f"{self.source}: {key} is 0 but the objective uses inner thresholds: set fixed "
                f"{key} > 0 or use an objective with 'fixed' or 'paper' thresholds"
            )

    def to_dict(self) -> dict[str, Any]:
        """The space as written (for logging next to the sweep)."""
        return self.raw or {"base": self.base, "fixed": self.fixed, "params": [p.key for p in self.params]}


def _unknown_key(source: str, where: str, key: str, keys: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, keys, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"{source}: {where}: unknown configuration key {key!r}{hint}")


def _number(source: str, where: str, spec: dict[str, Any], name: str, integer: bool) -> Any:
    if name not in spec:
        raise ConfigError(f"{source}: {where}: missing '{name}'")
    value = spec[name]
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{source}: {where}: '{name}' must be {kind}, got {value!r}")
    return value


def _distribution(source: str, where: str, spec: dict[str, Any]) -> tuple[str, BaseDistribution, dict]:
    kind = spec.get("type")
    if kind not in _PARAM_KEYS:
        raise ConfigError(f"{source}: {where}: 'type' must be float, int or categorical, got {kind!r}")
    extra = sorted(set(spec) - _PARAM_KEYS[kind])
    if extra:
        raise ConfigError(f"{source}: {where}: unexpected field(s) {extra} for type {kind}")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{source}: {where}: 'choices' must be a non-empty list")
        decoded: dict[Any, Any] = {}
        encoded = []
        for choice in choices:
            if isinstance(choice, _Primitive):
                encoded.append(choice)
            else:
                label = json.dumps(choice, sort_keys=True)
                decoded[label] = choice
                encoded.append(label)
        if len(set(map(repr, encoded))) != len(encoded):
            raise ConfigError(f"{source}: {where}: 'choices' has duplicates: {choices}")
        return kind, CategoricalDistribution(encoded), decoded
    integer = kind == "int"
    low = _number(source, where, spec, "low", integer)
    high = _number(source, where, spec, "high", integer)
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{source}: {where}: 'log' must be true or false, got {log!r}")
    step = _number(source, where, spec, "step", integer) if "step" in spec else (1 if integer else None)
    if low > high:
        raise ConfigError(f"{source}: {where}: low must be <= high, got low={low}, high={high}")
    if log and low <= 0:
        raise ConfigError(f"{source}: {where}: a log scale needs low > 0, got low={low}")
    if log and step not in (None, 1):
        raise ConfigError(f"{source}: {where}: 'step' cannot be combined with log: true")
    if step is not None and step <= 0:
        raise ConfigError(f"{source}: {where}: 'step' must be > 0, got {step}")
    try:
        if integer:
            return kind, IntDistribution(low, high, log=log, step=step), {}
        return kind, FloatDistribution(float(low), float(high), log=log, step=step), {}
    except ValueError as err:
        raise ConfigError(f"{source}: {where}: {err}") from None


def _condition(
    source: str, where: str, when: Any, keys: list[str], earlier: set[str], searched: set[str]
) -> dict[str, tuple[Any, ...]]:
    if not isinstance(when, dict) or not when:
        raise ConfigError(f"{source}: {where}.when: expected a mapping key -> value(s)")
    out: dict[str, tuple[Any, ...]] = {}
    for key, allowed in when.items():
        if key not in keys:
            raise _unknown_key(source, f"{where}.when", key, keys)
        if key not in earlier and key in searched:
            raise ConfigError(
                f"{source}: {where}.when: {key!r} is searched but listed after this parameter; "
                "list it first"
            )
        out[key] = tuple(allowed) if isinstance(allowed, list) else (allowed,)
    return out


def _check_values(space: SearchSpace, param: Param) -> None:
    """Build the configuration at each bound/choice (with the condition satisfied)."""
    condition = {k: v[0] for k, v in param.when.items()}
    for value in param.candidates():
        try:
            space.build({**condition, param.key: value}, resolve=False)
        except ConfigError as err:
            detail = str(err).split(": ", 1)[-1].split(" (overrides")[0]
            raise ConfigError(
                f"{space.source}: params.{param.key}: value {value!r} is not valid: {detail}"
            ) from None


def space_from_dict(data: Any, source: str = "<space>") -> SearchSpace:
    """Validate a parsed space; every error names ``source`` and the offending key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with base, fixed and params")
    extra = sorted(set(data) - _TOP_KEYS)
    if extra:
        raise ConfigError(f"{source}: unexpected top-level key(s) {extra}: expected {sorted(_TOP_KEYS)}")
    base = data.get("base", "quick")
    if base not in _PRESETS:
        raise ConfigError(f"{source}: base: expected one of {list(_PRESETS)}, got {base!r}")
    keys = config_keys()
    fixed = data.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{source}: fixed: expected a mapping key -> value")
    for key in fixed:
        if key not in keys:
            raise _unknown_key(source, "fixed", key, keys)
    raw_params = data.get("params") or {}
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{source}: params: expected a non-empty mapping key -> distribution")
    searched = set(raw_params)
    space = SearchSpace(base=base, fixed=dict(fixed), params=[], source=source, raw=data)
    try:
        space.base_config  # noqa: B018 - validates preset + fixed
    except ValidationError as err:
        raise ConfigError(f"{source}: fixed: {_validation_message(err)}") from None
    except ValueError as err:
        raise ConfigError(f"{source}: fixed: {err}") from None
    earlier: set[str] = set()
    for key, spec in raw_params.items():
        where = f"params.{key}"
        if key not in keys:
            raise _unknown_key(source, "params", key, keys)
        if key in fixed:
            raise ConfigError(f"{source}: {where}: the key is both fixed and searched")
        if not isinstance(spec, dict):
            raise ConfigError(f"{source}: {where}: expected a mapping with 'type'")
        kind, dist, decoded = _distribution(source, where, spec)
        when = _condition(source, where, spec["when"], keys, earlier, searched) if "when" in spec else {}
        if key in when:
            raise ConfigError(f"{source}: {where}.when: a parameter cannot depend on itself")
        param = Param(key=key, kind=kind, distribution=dist, when=when, decoded=decoded)
        static = {k: v for k, v in when.items() if k not in searched}
        if static and not space.active(Param(key, kind, dist, static), {}, space.base_config):
            logger.warning("%s: %s: its condition never holds with the fixed values; never sampled", source, where)
        _check_values(space, param)
        space.params.append(param)
        earlier.add(key)
    space.start_with = _start_with(space, data.get("start_with"))
    return space


def _start_with(space: SearchSpace, start: Any) -> tuple[str, ...]:
    """Check ``start_with`` (a preset or a list of presets): every searched key's value in each preset
    must lie in its distribution."""
    if start is None:
        return ()
    names = start if isinstance(start, list) else [start]
    if not names or any(name not in START_LABELS for name in names) or len(set(names)) < len(names):
        raise ConfigError(
            f"{space.source}: start_with: expected one of {list(START_LABELS)} or a list of them, each once, "
            f"got {start!r}"
        )
    for name in names:
        preset = ExperimentConfig.preset(name)
        for param in space.params:
            value = dotted_get(preset, param.key)
            if not param.contains(value):
                whose = "the paper's value" if name == "paper" else f"the {name} preset's value"
                raise ConfigError(
                    f"{space.source}: start_with: {name}: params.{param.key} does not contain {whose} "
                    f"{value!r}: widen its range or choices"
                )
    return tuple(names)


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a YAML search space."""
    return space_from_dict(read_yaml(path, "search space"), source=str(path))
