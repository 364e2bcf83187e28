"""A sweep's folder on disk, and the rules for starting or resuming one in it.

Layout of ``<workdir>/sweeps/<name>/``::

    sweep.json        the settings (a resume reads them back)
    data.json         the data the sweep reads: each cache's fingerprint, the data key, the
                      configuration-fingerprint version
    space.yaml        the search space as it was when the sweep started
    folds/<data key>/ the fold store (orchestration.folds.store.FoldStore), one per data key
    optuna.journal    the Optuna study
    ray/              Ray Tune's experiment folders ('loso' and 'cross')
    failures.json     the failed folds' errors of every run (the summary lists them after a resume)
    leaderboard.csv, summary.json, artifacts/   written at the end
    slurm/            the Slurm batch script, each job's output and jobs.tsv (aullm slurm)

A resume is refused, with the file and what to do, when the caches are not the data the sweep
started on or when this aullm fingerprints configurations differently; the fold store is keyed by
the data key as well, so results of two datasets can never be mixed.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aullm_core.atomic import atomic_write_text
from aullm_core.config import FINGERPRINT_VERSION
from aullm_core.errors import ConfigError, one_line
from orchestration.folds.store import FoldStore
from orchestration.search.space import SearchSpace, load_space
from orchestration.sweep.settings import SweepSettings, sweep_path

__all__ = ["DataRecord", "SweepFolder", "load_sweep_settings", "resolve_settings", "write_json"]

logger = logging.getLogger(__name__)

#: Settings a resumed sweep may change (how it runs, not what it computes); not logged as params.
RUNTIME_SETTINGS = frozenset({"address", "num_cpus", "wait_nodes", "concurrency", "verbose", "check_resources", "resume",
                              "fold_timeout", "min_free_mb"})


def write_json(path: Path, data: Any) -> None:
    """Atomically replace ``path`` with ``data`` as indented JSON."""
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str))


class DataRecord(BaseModel):
    """What ``data.json`` holds: the data a sweep's folds were trained on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fingerprint_version: int
    data_key: str
    caches: dict[str, str]  # path -> ClipSet.fingerprint
    llm_ids: dict[str, str] = Field(default_factory=dict)  # checkpoint folder -> content identity


@dataclass(frozen=True)
class SweepFolder:
    """Paths of one sweep folder."""

    path: Path

    @classmethod
    def of(cls, workdir: str | Path, name: str) -> SweepFolder:
        return cls(sweep_path(workdir, name))

    @property
    def settings_file(self) -> Path:
        return self.path / "sweep.json"

    @property
    def data_file(self) -> Path:
        return self.path / "data.json"

    @property
    def journal(self) -> Path:
        return self.path / "optuna.journal"

    @property
    def ray(self) -> Path:
        return self.path / "ray"

    @property
    def failures_file(self) -> Path:
        return self.path / "failures.json"

    def record_failures(self, lines: list[str]) -> list[str]:
        """Add this run's failed-fold lines to ``failures.json``; every run's, oldest first."""
        try:
            known = json.loads(self.failures_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            known = []
        merged = list(dict.fromkeys([*known, *lines]))
        if merged != known:
            write_json(self.failures_file, merged)
        return merged

    def store_root(self, data_key: str) -> Path:
        return self.path / "folds" / data_key

    def data(self) -> DataRecord:
        """``data.json``; ConfigError when absent (a sweep of an older aullm) or damaged."""
        try:
            return DataRecord.model_validate_json(self.data_file.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"{self.data_file}: missing; this sweep was made by an older aullm whose fold results are "
                "keyed differently: start a new sweep (another --name)"
            ) from None
        except (ValidationError, ValueError) as err:
            raise ConfigError(f"{self.data_file}: damaged ({one_line(err)}); start a new sweep") from None

    @cached_property
    def store(self) -> FoldStore:
        """The fold store of the data this sweep was started on (data.json is read once)."""
        return FoldStore(self.store_root(self.data().data_key))

    def saved_location(self) -> Path:
        """Where this sweep's folder was when sweep.json was last written (it may have moved since)."""
        return load_sweep_settings_file(self.settings_file).sweep_dir

    def create(self, settings: SweepSettings, record: DataRecord, space: SearchSpace | None = None) -> None:
        """Write a new sweep's folder: the space, data.json, then sweep.json (what --resume looks for).

        The space is copied as written, or, when its checkpoint paths were resolved (relative paths, cache
        folders, hub ids), written with the absolute folders, so a resume from anywhere finds them."""
        self.path.mkdir(parents=True, exist_ok=True)
        if space is None or space == load_space(settings.space):
            shutil.copyfile(settings.space, self.path / "space.yaml")
        else:
            text = yaml.safe_dump(space.raw, sort_keys=False, allow_unicode=True)
            atomic_write_text(self.path / "space.yaml", f"# {settings.space}, model.llm resolved to folders\n{text}")
        write_json(self.data_file, record.model_dump(mode="json"))
        write_json(self.settings_file, settings.model_dump(mode="json"))

    def changed_llms(self, record: DataRecord) -> dict[str, tuple[str, str]]:
        """Checkpoint folders whose content changed since the sweep started: folder -> (then, now)."""
        saved = self.data().llm_ids
        return {path: (saved[path], now) for path, now in record.llm_ids.items() if path in saved and saved[path] != now}

    def restart_search(self, record: DataRecord) -> Path:
        """Move the search's state (Optuna journal, Ray Tune's folders) aside, so the resumed sweep searches
        anew, and record the data it now runs on; the fold store stays (its old folds never match the new
        fingerprints). Returns where the old state went."""
        aside = self.set_aside([self.journal, self.ray, self.path / "leaderboard.csv", self.path / "summary.json"])
        write_json(self.data_file, record.model_dump(mode="json"))
        return aside

    def set_aside(self, paths: list[Path], label: str = "") -> Path:
        """Move ``paths`` (those that exist) into ``superseded/<label><time>/``, kept for a look; returns it."""
        aside = self.path / "superseded" / f"{label}{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(parents=True, exist_ok=True)
        for path in paths:
            if path.exists():
                shutil.move(str(path), str(aside / path.name))
        return aside

    def check_data(self, record: DataRecord) -> None:
        """Refuse a resume on other data or another fingerprint version than the sweep started with."""
        saved = self.data()
        if saved.fingerprint_version != record.fingerprint_version:
            raise ConfigError(
                f"{self.data_file}: this sweep's configurations were fingerprinted by version "
                f"{saved.fingerprint_version}, this aullm uses {record.fingerprint_version}: its stored folds "
                "cannot be reused; start a new sweep (another --name)"
            )
        for path, fingerprint in record.caches.items():
            before = saved.caches.get(path)
            if before is not None and before != fingerprint:
                raise ConfigError(
                    f"{path}: the cache changed since the sweep started (data {before}, now {fingerprint}); "
                    "restore the original cache to resume, or start a new sweep on this one"
                )
        if saved.data_key != record.data_key:
            raise ConfigError(
                f"{self.data_file}: the sweep's data ({saved.data_key}) is not the data given now "
                f"({record.data_key}); resume with the caches it started on"
            )


def load_sweep_settings(workdir: str | Path, name: str) -> SweepSettings:
    """The settings a sweep was started with (``<workdir>/sweeps/<name>/sweep.json``)."""
    path = SweepFolder.of(workdir, name).settings_file
    if not path.exists():
        raise ConfigError(f"{path}: no sweep named {name!r} under {workdir} to resume")
    return load_sweep_settings_file(path)


def load_sweep_settings_file(path: Path) -> SweepSettings:
    """``sweep.json``; ConfigError naming it when it is not this aullm's settings."""
    try:
        return SweepSettings.model_validate_json(path.read_text())
    except ValidationError as err:
        raise ConfigError(f"{path}: not the settings of this aullm's sweeps ({one_line(err)})") from None


def resolve_settings(settings: SweepSettings) -> tuple[SweepSettings, SearchSpace, bool]:
    """The settings and space to use (saved ones on resume) and whether the sweep is new; writes nothing."""
    folder = SweepFolder(settings.sweep_dir)
    if settings.resume:
        if not folder.settings_file.exists():
            raise ConfigError(
                f"{folder.settings_file}: no sweep named {settings.name!r} to resume (drop --resume to start it)"
            )
        stored = load_sweep_settings(settings.workdir, settings.name)
        runtime = set(RUNTIME_SETTINGS)
        changed = [
            k for k in SweepSettings.model_fields
            if k not in runtime | {"space", "workdir"} and getattr(stored, k) != getattr(settings, k)
        ]
        if changed:
            logger.warning("resuming %s with its saved settings; ignoring changed %s", settings.name, changed)
        update = {k: getattr(settings, k) for k in runtime}
        update["workdir"] = Path(settings.workdir).resolve()  # where the folder is now (it may have moved)
        return stored.model_copy(update=update), load_space(folder.path / "space.yaml"), False
    if folder.settings_file.exists():
        raise ConfigError(
            f"{folder.path}: a sweep named {settings.name!r} exists: add --resume to continue it or choose another --name"
        )
    space = load_space(settings.space).with_llm_folders()
    for path in (settings.cache, settings.cross_cache):
        if path is not None and not Path(path).exists():
            raise ConfigError(f"{path}: cache file not found (build one with `aullm data cache`)")
    absolute = settings.model_copy(
        update={
            "cache": Path(settings.cache).resolve(),
            "cross_cache": None if settings.cross_cache is None else Path(settings.cross_cache).resolve(),
            "space": Path(settings.space).resolve(),
            "workdir": Path(settings.workdir).resolve(),
            "fold_metric": settings.fold_score,
        }
    )
    return absolute, space, True


def data_record(caches: dict[str, str], key: str, llm_ids: dict[str, str] | None = None) -> DataRecord:
    return DataRecord(fingerprint_version=FINGERPRINT_VERSION, data_key=key, caches=caches, llm_ids=llm_ids or {})


def load_study(folder: SweepFolder, name: str) -> Any:
    import optuna

    from orchestration.search.journal import open_journal

    return optuna.load_study(study_name=name, storage=open_journal(folder.journal))


def open_study(folder: SweepFolder, name: str) -> Any:
    """The sweep's study for its driver to read after the search, created empty (maximising, as the searcher
    creates it) where a stop came before Ray Tune asked for the first configuration: then there is none yet."""
    import optuna

    from orchestration.search.journal import open_journal
    from orchestration.search.trials import StudyTrials

    return StudyTrials(open_journal(folder.journal), name).open(sampler=optuna.samplers.RandomSampler(),
                                                                pruner=optuna.pruners.NopPruner())


def budget_spent(study: Any, n_configs: int) -> bool:
    """Every configuration of the budget asked and told (the study is the record)."""
    import optuna

    states = [t.state for t in study.get_trials(deepcopy=False)]
    return len(states) >= n_configs and optuna.trial.TrialState.RUNNING not in states
