"""One fold = one Tune trial: look in the fold store, else train, store and report.

``fold_trainable`` is the Ray Tune function trainable; ``run_fold`` does the work and is a plain
function (tests call it without Ray). A worker process loads each cache once and keeps it
(``_CLIPS``), so with ``reuse_actors`` consecutive folds in one process pay neither the load nor,
on the science side, the frozen LLM's construction again.

A trial's configuration is a ``FoldTask`` (configuration, fold, data fingerprint); the trial
refuses to train when the caches it finds on its node are not the data the task names.

A fold already in the fold store is never trained again (a retried trial, a resumed sweep, a
configuration proposed twice): its stored result is reported with ``trained = 0``.

With ``workers_per_fold > 1`` the trial builds a ``ray.train.torch.TorchTrainer`` (Ray Train V2)
whose workers run the fold function together; the configuration must use
``train.engine: deepspeed`` so the science side calls ``deepspeed.initialize`` on the process
group Ray Train set up. Rank 0 writes the fold result to the store; the trial reads it back.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from aullm_core.config import ExperimentConfig
from aullm_core.data.cache import load_cache
from aullm_core.data.records import ClipSet
from aullm_core.data.splits import CROSS, LOSO, Fold, cross_domain_fold, loso_folds
from aullm_core.errors import ConfigError
from aullm_core.train.objective import FoldScore
from aullm_core.train.result import FoldResult
from orchestration.folds.orphan_guard import exit_with_raylet
from orchestration.folds.outcome import FoldOutcome
from orchestration.folds.store import FoldStore
from orchestration.folds.task import FoldTask, data_key

__all__ = ["AULLM_CODE", "CacheLoader", "FoldCode", "FoldFn", "FoldJob", "fold_trainable", "load_clips", "run_fold", "train_fold"]

logger = logging.getLogger(__name__)

#: (absolute path, mtime_ns, loader) -> ClipSet, kept for the life of the worker process.
_CLIPS: dict[tuple[str, int, CacheLoader], ClipSet] = {}


class FoldFn(Protocol):
    """What trains one fold: ``aullm_core.train.fold.train_fold``'s signature (tests pass cheap ones)."""

    def __call__(self, train_set: ClipSet, test_set: ClipSet, fold: Fold, config: ExperimentConfig, *,
                 device: str = "cpu", progress: bool = True) -> FoldResult: ...


#: What reads a clip cache into memory: ``aullm_core.data.cache.load_cache``'s signature.
CacheLoader = Callable[[str], ClipSet]


def train_fold(train_set: ClipSet, test_set: ClipSet, fold: Fold, config: ExperimentConfig, *,
               device: str = "cpu", progress: bool = True) -> FoldResult:
    """``aullm_core.train.fold.train_fold``, imported in the process that trains (torch, transformers
    and peft stay out of the sweep's driver and the command line)."""
    from aullm_core.train import fold as science

    return science.train_fold(train_set, test_set, fold, config, device=device, progress=progress)


@dataclass(frozen=True)
class FoldCode:
    """The code a fold runs: the fold function and the cache loader (aullm_core's by default)."""

    fold_fn: FoldFn = train_fold
    cache_loader: CacheLoader = load_cache


#: aullm_core's fold training and cache loader.
AULLM_CODE = FoldCode()


@dataclass(frozen=True)
class FoldJob:
    """What every fold trial of a sweep shares (paths, code and runtime choices, no science)."""

    store_root: str
    cache: str
    cross_cache: str | None = None
    code: FoldCode = field(default_factory=FoldCode)
    fold_score: FoldScore = field(default_factory=FoldScore)
    device: str = "cpu"
    cpus_per_fold: float = 1.0
    gpus_per_fold: float = 0.0
    workers_per_fold: int = 1
    train_storage: str | None = None  # Ray Train run folder (workers_per_fold > 1)


def load_clips(path: str, loader: CacheLoader = load_cache) -> ClipSet:
    """Load a cache once per process (reloaded only if the file changed)."""
    resolved = str(Path(path).resolve())
    key = (resolved, os.stat(resolved).st_mtime_ns, loader)
    if key not in _CLIPS:
        _CLIPS[key] = loader(resolved)
    return _CLIPS[key]


def job_data_key(job: FoldJob) -> str:
    """The data key of the caches this job reads, as loaded here (``fold_task.data_key``)."""
    paths = [job.cache] + ([job.cross_cache] if job.cross_cache is not None else [])
    return data_key([load_clips(p, job.code.cache_loader).fingerprint for p in paths])


def fold_data(job: FoldJob, protocol: str, fold_id: str) -> tuple[ClipSet, ClipSet, Fold]:
    """(train set, test set, fold) for a LOSO subject or a '<source>-><target>' direction."""
    if protocol == LOSO:
        clips = load_clips(job.cache, job.code.cache_loader)
        folds = {f.fold_id: f for f in loso_folds(clips)}
        if fold_id not in folds:
            raise ConfigError(f"{job.cache}: no LOSO fold {fold_id!r} (subjects: {sorted(folds)[:5]}...)")
        return clips, clips, folds[fold_id]
    if protocol == CROSS:
        if job.cross_cache is None:
            raise ConfigError(f"cross-domain fold {fold_id!r} needs a second cache (--cross-cache)")
        sets = [load_clips(p, job.code.cache_loader) for p in (job.cache, job.cross_cache)]
        by_name = {c.name: c for c in sets}
        source, _, target = fold_id.partition("->")
        if source not in by_name or target not in by_name:
            raise ConfigError(f"cross-domain fold {fold_id!r}: caches hold {sorted(by_name)}")
        fold = cross_domain_fold(by_name[source], by_name[target])
        return by_name[source], by_name[target], fold
    raise ConfigError(f"protocol {protocol!r}: expected 'loso' or 'cross'")


def _set_threads(cpus: float) -> None:
    """A fold's threads = the CPUs reserved for it: torch's setting once torch is loaded, before that the
    variables torch reads when it is imported (a fold found in the store, or a fold function that does not
    use torch, does not pay for importing it)."""
    threads = str(max(1, int(cpus)))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(threads))
    else:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = threads


def _train_here(job: FoldJob, task: FoldTask, device: str) -> FoldResult:
    exit_with_raylet()  # a worker whose node is lost must not store a fold Tune is retraining elsewhere
    here = job_data_key(job)
    if here != task.data_fp:
        raise ConfigError(
            f"{job.cache}: this node's data ({here}) is not the data the sweep started on ({task.data_fp}); "
            "every node must read the same cache files"
        )
    train_set, test_set, fold = fold_data(job, task.protocol, task.fold_id)
    started = time.perf_counter()
    result = job.code.fold_fn(train_set, test_set, fold, task.experiment, device=device, progress=False)
    if not result.duration_s:
        result.duration_s = time.perf_counter() - started
    return result


def _distributed_worker(loop_config: dict) -> None:
    """Ray Train worker: every rank trains (DeepSpeed shards the work); rank 0 stores the result."""
    import ray.train
    import ray.train.torch

    job: FoldJob = loop_config["job"]
    task = FoldTask.model_validate(loop_config["task"])
    device = str(ray.train.torch.get_device()) if job.gpus_per_fold > 0 else "cpu"
    result = _train_here(job, task, device)
    if ray.train.get_context().get_world_rank() == 0:
        _put(job, task, result)


def _put(job: FoldJob, task: FoldTask, result: FoldResult) -> None:
    FoldStore(job.store_root).put(task.fp, task.protocol, task.fold_id, result, task.experiment.model_dump(mode="json"))


def _train_distributed(job: FoldJob, task: FoldTask) -> FoldResult:
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    if task.experiment.train.engine != "deepspeed":
        raise ConfigError("workers_per_fold > 1 needs train.engine: deepspeed in the search space")
    use_gpu = job.gpus_per_fold > 0
    resources = {"CPU": job.cpus_per_fold, **({"GPU": job.gpus_per_fold} if use_gpu else {})}
    trainer = TorchTrainer(
        _distributed_worker,
        train_loop_config={"job": job, "task": task.to_tune()},
        scaling_config=ray.train.ScalingConfig(
            num_workers=job.workers_per_fold, use_gpu=use_gpu, resources_per_worker=resources
        ),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"fold-{task.fp}-{task.protocol}-{task.fold_index}",
            storage_path=job.train_storage,
        ),
    )
    trainer.fit()
    result = FoldStore(job.store_root).get(task.fp, task.protocol, task.fold_id)
    if result is None:
        raise RuntimeError(f"distributed fold {task.fold_id}: rank 0 stored no result")
    return result


def run_fold(config: dict, job: FoldJob) -> FoldOutcome:
    """Train (or find) one fold; its outcome (the predictions are in the fold store)."""
    exit_with_raylet()  # before anything: a worker whose node is lost must not store a fold retried elsewhere
    started = time.perf_counter()
    task = FoldTask.model_validate(config)
    store = FoldStore(job.store_root)
    if job.workers_per_fold > 1:  # rank 0 of the Ray Train workers stores the result
        result = store.get(task.fp, task.protocol, task.fold_id)
        trained = result is None
        if result is None:
            result = _train_distributed(job, task)
    else:
        _set_threads(job.cpus_per_fold)
        result, trained = store.get_or_train(task.fp, task.protocol, task.fold_id,
                                             lambda: _train_here(job, task, job.device),
                                             task.experiment.model_dump(mode="json"))
    return FoldOutcome(number=task.number, fp=task.fp, protocol=task.protocol, fold_id=task.fold_id,
                       fold_index=task.fold_index, fold_score=job.fold_score.of(result), trained=trained,
                       fold_duration_s=float(result.duration_s), trial_s=time.perf_counter() - started,
                       pid=os.getpid())


def fold_trainable(config: dict, job: FoldJob) -> None:
    """Ray Tune function trainable (wrapped with ``tune.with_parameters(..., job=...)``); ``config`` is a
    ``FoldTask``, the report a ``FoldOutcome``.

    A ``ConfigError`` (a checkpoint that does not load, data that is not the sweep's) cannot succeed
    on a retry: it is reported as the fold's outcome (``config_error``, one line) instead of raised, so
    Tune does not retry it and the searcher fails the configuration at once."""
    from ray import tune

    try:
        outcome = run_fold(config, job)
    except ConfigError as err:
        outcome = FoldOutcome.refused(FoldTask.model_validate(config), str(err).splitlines()[0])
    tune.report(outcome.to_tune())
