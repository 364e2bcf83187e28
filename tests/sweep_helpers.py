"""A cheap but real fold function for sweep tests, importable by Ray workers (tests/ on PYTHONPATH).

``quick_fold`` has ``train_fold``'s signature and returns a genuine ``FoldResult`` whose quality
depends deterministically on the configuration (a learning rate near 1e-3 and little dropout
score best) and on the fold, so Optuna, pruning and scoring behave as with real training,
in a fraction of a second. Controls come from environment variables or, because Ray's worker
processes keep the environment they started with, from a JSON file named by
``AULLM_TEST_CONTROL`` that a test may rewrite at any time (same keys, lower case):
- ``AULLM_TEST_COUNTER``: append one line per training, ``<fp> <protocol> <fold_id> <pid>``;
- ``AULLM_TEST_SLEEP``: seconds each fold "trains" (default 0.2);
- ``AULLM_TEST_STARTED``: append ``<fold_id> <pid>`` when a fold starts;
- ``AULLM_TEST_FAIL_FOLD`` + ``AULLM_TEST_FAIL_DIR``: raise once for that fold id (a marker
  file created with O_EXCL remembers it across processes), to test retries.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from aullm_core.config import ExperimentConfig
from aullm_core.data.records import ClipSet
from aullm_core.data.splits import Fold
from aullm_core.train.result import FoldResult

#: ``aullm`` with this module's fold code (``hooked_aullm.py``), for tests that run the command line.
HOOKED_AULLM = [sys.executable, str(Path(__file__).resolve().parent / "hooked_aullm.py")]


def hooked_aullm_bin(folder: Path) -> Path:
    """A folder holding an ``aullm`` executable that runs ``HOOKED_AULLM`` (put first on PATH where a
    script, as Slurm's batch script, calls ``aullm``)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "aullm"
    script.write_text("#!/bin/sh\nexec " + " ".join(f"'{part}'" for part in HOOKED_AULLM) + ' "$@"\n')
    script.chmod(0o755)
    return folder


#: The one-parameter space of the orchestration tests (cheap folds, configurations that differ).
ONE_PARAM_SPACE = """\
base: quick
fixed: {train.epochs: 2}
params:
  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
"""

def config_quality(config: ExperimentConfig) -> float:
    """In (0, 1): how well this configuration 'learns' (peak at lr=1e-3, dropout 0.1)."""
    lr_term = (math.log10(config.train.lr) + 3.0) ** 2
    return float(np.clip(0.95 - 0.5 * lr_term - 0.6 * max(0.0, config.model.dropout - 0.1), 0.02, 0.98))


def _seed(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("|".join(parts).encode()).digest()[:8], "little")


def control(name: str, default: str | None = None) -> str | None:
    """A test control: the control file's value, else the environment's, else ``default``."""
    path = os.environ.get("AULLM_TEST_CONTROL")
    if path and os.path.exists(path):
        with open(path) as handle:
            values = json.load(handle)
        if name.lower() in values:
            value = values[name.lower()]
            return None if value is None else str(value)
    return os.environ.get(f"AULLM_TEST_{name.upper()}", default)


def _maybe_fail(fold_id: str) -> None:
    target, folder = control("fail_fold"), control("fail_dir")
    if target != fold_id or not folder:
        return
    marker = Path(folder) / f"failed-{fold_id}"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    raise RuntimeError(f"injected failure of fold {fold_id}")


def quick_fold(
    train_set: ClipSet, test_set: ClipSet, fold: Fold, config: ExperimentConfig, *, device: str = "cpu",
    progress: bool = True,
) -> FoldResult:
    started = time.perf_counter()
    begun = control("started")
    if begun:  # where a test finds the worker training this fold (to stop it, say)
        with open(begun, "a") as handle:
            handle.write(f"{fold.fold_id} {os.getpid()}\n")
    time.sleep(float(control("sleep") or "0.2"))
    _maybe_fail(fold.fold_id)
    labels = test_set.label_matrix(fold.aus)[fold.test_idx].astype(np.uint8)
    rng = np.random.default_rng(_seed(config.fingerprint(), fold.protocol, fold.fold_id))
    quality = config_quality(config)
    logits = 3.0 * quality * (2.0 * labels - 1.0) + rng.normal(0.0, 1.2, labels.shape)
    probs = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    thresholds = None
    if config.train.inner_val_share > 0:
        thresholds = np.clip(0.5 + 0.05 * rng.standard_normal(len(fold.aus)), 0.1, 0.9)
    result = FoldResult.for_fold(
        fold,
        test_set,
        probs=probs,
        labels=labels,
        epoch_losses=[1.0 - quality * (e + 1) / config.train.epochs for e in range(config.train.epochs)],
        inner_thresholds=thresholds,
        duration_s=time.perf_counter() - started,
    )
    counter = control("counter")
    if counter:
        with open(counter, "a") as handle:
            handle.write(f"{config.fingerprint()} {fold.protocol} {fold.fold_id} {os.getpid()}\n")
    return result


def write_tiny_cache(path: Path, *, name: str = "casme2", subjects: int = 6, clips_per_subject: int = 4,
                     aus: tuple[int, ...] = (1, 2, 4, 7), seed: int = 0) -> Path:
    """A small clip set saved as npz (tests of orchestration only; the real cache is HDF5)."""
    rng = np.random.default_rng(seed)
    n = subjects * clips_per_subject
    subject_ids = np.repeat([f"s{i:02d}" for i in range(1, subjects + 1)], clips_per_subject)
    labels = (rng.random((n, len(aus))) < 0.35).astype(np.uint8)
    labels[np.arange(n), rng.integers(0, len(aus), n)] = 1  # every clip has at least one AU
    np.savez(path, name=np.array(name), subjects=subject_ids, aus=np.array(aus), labels=labels,
             frames=rng.integers(0, 255, (n, 6, 16, 16), dtype=np.uint8))
    return path


def load_tiny_cache(path: str | Path) -> ClipSet:
    import pandas as pd

    with np.load(path, allow_pickle=False) as data:
        subjects = [str(s) for s in data["subjects"]]
        meta = pd.DataFrame({
            "subject": subjects,
            "clip": [f"{s}_{i}" for i, s in enumerate(subjects)],
            "onset": 0, "apex": 2, "offset": 5, "emotion": "other", "n_frames": 6,
        })
        return ClipSet(name=str(data["name"]), frames=list(data["frames"]), meta=meta,
                       aus=tuple(int(a) for a in data["aus"]), labels=data["labels"], attrs={"path": str(path)})


@contextlib.contextmanager
def local_ray(num_cpus: int, control_file: Path) -> Iterator[None]:
    """A local Ray whose workers import this folder and read ``control_file`` (see ``control``);
    PYTHONPATH and AULLM_TEST_CONTROL are restored afterwards."""
    import ray

    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "AULLM_TEST_CONTROL")}
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (here, old["PYTHONPATH"]) if p)
    os.environ["AULLM_TEST_CONTROL"] = str(control_file)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def refusing_fold(train_set: ClipSet, test_set: ClipSet, fold: Fold, config: ExperimentConfig, *,
                  device: str = "cpu", progress: bool = True) -> FoldResult:
    """A fold function that always meets an error no retry can fix (as a checkpoint that fails to load)."""
    from aullm_core.errors import ConfigError

    counter = control("counter")
    if counter:
        with open(counter, "a") as handle:
            handle.write(f"{config.fingerprint()} {fold.protocol} {fold.fold_id} {os.getpid()}\n")
    raise ConfigError(f"model.llm={config.model.llm!r}: refused in fold {fold.fold_id}")


def cheap_code(fold_fn: object = None) -> object:
    """The tests' ``FoldCode``: ``quick_fold`` (or ``fold_fn``) and the tiny-cache loader."""
    from orchestration.folds.trainable import FoldCode

    return FoldCode(fold_fn=fold_fn or quick_fold, cache_loader=load_tiny_cache)


def cheap_hooks(*, tracked: bool = False, fold_fn: object = None) -> object:
    """``SweepHooks`` running the tests' fold code; ``tracked``: MLflow and the report, as ``aullm sweep``."""
    from orchestration.cli.wiring import sweep_hooks
    from orchestration.sweep.run import SweepHooks

    code = cheap_code(fold_fn)
    return sweep_hooks(code) if tracked else SweepHooks(code=code)


def sweep_env(tmp_path: Path) -> dict[str, str]:
    """The environment of an ``aullm`` subprocess running this module's folds (0.4 s each), counted in
    ``tmp_path/trainings.txt``."""
    control = tmp_path / "control.json"
    control.write_text(json.dumps({"counter": str(tmp_path / "trainings.txt"), "sleep": 0.4}))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(Path(__file__).resolve().parent), env.get("PYTHONPATH")) if p)
    env["AULLM_TEST_CONTROL"] = str(control)
    env["RAY_AUTH_MODE"] = "disabled"
    return env


def kill_session(proc: subprocess.Popen, *, timeout_s: float = 30.0) -> None:
    """SIGKILL a driver started with ``start_new_session`` and every process under it, and return once all
    are gone: a Ray worker outside the session's process group (or one the kernel has not reaped yet) could
    otherwise still store a fold after the caller has looked at the store."""
    import psutil

    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for p in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait(timeout_s)
    deadline = time.monotonic() + timeout_s
    while alive := [p.pid for p in tree if _running(p)]:
        assert time.monotonic() < deadline, f"processes of the killed sweep still alive: {alive}"
        time.sleep(0.05)


def _running(process) -> bool:
    """Alive and not a zombie (a zombie has stopped; its parent may never reap it in a container)."""
    import psutil

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def trainings(tmp_path: Path) -> list[tuple[str, str, str]]:
    """(configuration, protocol, fold) of every fold trained, in order."""
    path = tmp_path / "trainings.txt"
    return [tuple(line.split()[:3]) for line in path.read_text().splitlines()] if path.exists() else []
