"""Training one fold (``train_fold``) or a final model on every clip (``train_full``).

The reference recipe (method.md section 4): Adam with L2 weight decay, constant learning rate,
full batch by default, dropout, the seed set at the start of each fold, every trained part
rebuilt per fold (the frozen base LLM is pooled per process, see ``aullm_core.model.llm``).

Inner validation (``train.inner_val_share > 0``): a seeded share of the TRAINING subjects is held
out (never the test subject), a model is trained on the rest, and per-AU thresholds (and, with
``select_epoch``, the epoch count) are chosen on the held-out subjects' predictions, maximising
``train.threshold_metric``. Then, with ``inner_refit`` (default), the model that predicts the test
subject is retrained on ALL training subjects with the same seed and the chosen epoch count, so
its test predictions are exactly those of a run without inner validation: the paper, fixed and
inner protocols score the same predictions and differ only in thresholds. ``inner_refit=False``
predicts with the inner model instead (cheaper, trained on fewer subjects).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from aullm_core.config import ExperimentConfig
from aullm_core.data.records import ClipSet
from aullm_core.data.splits import Fold
from aullm_core.errors import ConfigError
from aullm_core.model.config import FRAME_SIZE
from aullm_core.model.llm import get_base_llm, llm_hidden_size, llm_info, spec_from_config
from aullm_core.model.vlm import AULLM
from aullm_core.train.engine_torch import TorchEngine
from aullm_core.train.host_memory import retain_freed_memory
from aullm_core.train.losses import LossFn, get_loss
from aullm_core.train.metrics import PAPER_THRESHOLDS, best_thresholds, f1_macro, f1_pos
from aullm_core.train.result import FoldResult
from aullm_core.train.sampling import DeviceClips

__all__ = [
    "TrainedModel",
    "build_model",
    "inner_split",
    "seed_everything",
    "train_epoch",
    "train_fold",
    "train_full",
]

log = logging.getLogger(__name__)

EVAL_BATCH = 256


@dataclass
class TrainedModel:
    """A model trained on every given clip, ready for prediction and checkpoints."""

    model: AULLM
    config: ExperimentConfig
    aus: tuple[int, ...]
    thresholds: dict[int, float]
    preprocessing: dict[str, object] = field(default_factory=dict)
    epoch_losses: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    device: str = "cpu"


def seed_everything(seed: int) -> None:
    """Seed torch (every device), numpy's global RNG and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic kernels on CPU for the duration of a fold (restored afterwards)."""
    if device.type != "cpu":
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)


def build_model(
    config: ExperimentConfig, n_aus: int, device: torch.device, *, share_base_weights: bool = True,
    frame_size: int = FRAME_SIZE,
) -> AULLM:
    """A fresh AULLM on ``device`` for ``frame_size`` x ``frame_size`` frames, initialised from the current
    torch RNG (base LLM from the pool)."""
    mcfg = config.model
    base = None
    if mcfg.use_llm:
        base = get_base_llm(spec_from_config(mcfg, precision=config.train.precision, device=str(device)))
    d_model = base.hidden_size if base is not None else llm_hidden_size(mcfg)
    model = AULLM(
        mcfg,
        n_aus=n_aus,
        d_model=d_model,
        base=base,
        n_frames=config.data.n_frames,
        frame_size=frame_size,
        share_base_weights=share_base_weights,
    )
    model.to_device(device)
    if config.train.compile and device.type == "cuda":
        model.compile_regions()
    return model


def inner_split(subjects: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (fit, validation) holding out ``round(share * n)`` (at least 1) whole subjects."""
    unique = sorted(set(np.asarray(subjects).astype(str).tolist()))
    if len(unique) < 2:
        raise ConfigError(
            f"train.inner_val_share={share} needs at least 2 training subjects, got {len(unique)}"
        )
    n_val = min(len(unique) - 1, max(1, round(share * len(unique))))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(unique, size=n_val, replace=False).tolist())
    is_val = np.array([s in held for s in np.asarray(subjects).astype(str)])
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


@dataclass
class _Monitor:
    """Clips predicted after every epoch (for epoch selection)."""

    clips: DeviceClips
    probs: list[np.ndarray] = field(default_factory=list)


@dataclass
class _Run:
    engine: TorchEngine
    losses: list[float]
    monitors: list[_Monitor]


def _make_engine(model: AULLM, config: ExperimentConfig, device: torch.device, rebuild) -> TorchEngine:
    if config.train.engine == "deepspeed":
        from aullm_core.train.engine_deepspeed import DeepSpeedEngine

        return DeepSpeedEngine(model, config.train, device, rebuild=rebuild)  # type: ignore[return-value]
    return TorchEngine(model, config.train, device)


@torch.no_grad()
def _predict(engine: TorchEngine, clips: DeviceClips, n_frames: int, n_aus: int) -> np.ndarray:
    """Probabilities (n, n_aus) for every clip; ranks split the clips and share the results."""
    engine.eval()
    rows = np.arange(len(clips))[engine.rank :: engine.world_size]
    out = []
    for start in range(0, len(rows), EVAL_BATCH):
        idx = torch.as_tensor(rows[start : start + EVAL_BATCH], device=clips.device)
        out.append(torch.sigmoid(engine.forward(clips.eval_batch(idx, n_frames)).float()))
    probs = torch.cat(out).cpu().numpy() if out else np.zeros((0, n_aus), dtype=np.float32)
    engine.train()
    _, probs = engine.gather_rows(rows, probs.astype(np.float64))
    return probs


def train_epoch(
    engine: TorchEngine,
    clips: DeviceClips,
    y: torch.Tensor,
    config: ExperimentConfig,
    generator: torch.Generator,
    loss_fn: LossFn,
) -> torch.Tensor:
    """One pass over the clips in a random order; returns the summed loss as a device tensor.

    Everything stays on the clips' device: the order, the sampled frame indices and the batches
    are built there, and nothing is read back to the host (no synchronisation in the step loop).
    """
    train, data = config.train, config.data
    total = torch.zeros((), device=clips.device)
    order = torch.randperm(len(clips), generator=generator, device=clips.device)  # (n,)
    for start in range(0, len(clips), train.batch_size):
        batch = order[start : start + train.batch_size][engine.rank :: engine.world_size]  # (B,)
        x = clips.train_batch(batch, data.n_frames, data.min_train_end, generator)  # (B, N, H, W)
        total += engine.train_step(x, y[batch], loss_fn)
    return total


def _fit(
    clips: DeviceClips,
    labels: np.ndarray,
    config: ExperimentConfig,
    device: torch.device,
    *,
    epochs: int,
    desc: str,
    progress: bool,
    monitors: Sequence[DeviceClips] = (),
) -> _Run:
    """Train a freshly seeded model for ``epochs`` on ``clips``; per-epoch mean loss per clip."""
    train = config.train
    share = not (train.engine == "deepspeed" and train.zero_stage == 3)
    if config.model.use_llm:  # load (or reuse) the base before seeding: loading must not shift the RNG
        get_base_llm(spec_from_config(config.model, precision=train.precision, device=str(device)))
    seed_everything(train.seed)
    side = int(clips.frames.shape[-1])  # the cache's frame size: (sum T, S, S)
    model = build_model(config, labels.shape[1], device, share_base_weights=share, frame_size=side)

    def rebuild() -> AULLM:
        return build_model(config, labels.shape[1], device, frame_size=side)

    engine = _make_engine(model, config, device, rebuild)
    loss_fn = get_loss(train.loss)
    y = torch.as_tensor(labels, dtype=torch.float32, device=device)  # (n, n_aus)
    generator = torch.Generator(device=device).manual_seed(train.seed)
    n = len(clips)
    watched = [_Monitor(m) for m in monitors]
    losses: list[float] = []
    engine.train()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, unit="epoch")
    for _ in bar:
        total = train_epoch(engine, clips, y, config, generator, loss_fn)
        losses.append(float(engine.sum_ranks(total)) / n)  # the one device sync of the epoch
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        for m in watched:
            m.probs.append(_predict(engine, m.clips, config.data.n_frames, labels.shape[1]))
    bar.close()
    return _Run(engine=engine, losses=losses, monitors=watched)


def _choose(val_probs: list[np.ndarray], val_labels: np.ndarray, config: ExperimentConfig,
            select_epoch: bool) -> tuple[np.ndarray, int]:
    """Per-AU thresholds (and 1-based epoch) maximising the threshold metric on held-out subjects."""
    metric = config.train.threshold_metric
    fn = f1_macro if metric == "f1_macro" else f1_pos
    candidates = range(len(val_probs)) if select_epoch else [len(val_probs) - 1]
    best: tuple[float, int, np.ndarray] | None = None
    for e in candidates:
        thr = best_thresholds(val_probs[e], val_labels, metric=metric, grid=PAPER_THRESHOLDS)
        value = float(np.mean([fn(val_labels[:, k], val_probs[e][:, k] >= thr[k]) for k in range(len(thr))]))
        if best is None or value > best[0]:
            best = (value, e, thr)
    assert best is not None
    return best[2], best[1] + 1


@dataclass
class _Outcome:
    run: _Run
    inner_thresholds: np.ndarray | None
    best_epoch: int | None
    test_probs: np.ndarray | None


def _train_with_inner(
    clip_set: ClipSet,
    idx: np.ndarray,
    labels: np.ndarray,
    config: ExperimentConfig,
    device: torch.device,
    *,
    desc: str,
    progress: bool,
    test_clips: DeviceClips | None,
    refit: bool,
) -> _Outcome:
    """Inner validation (if configured) then the final run; returns its engine and choices."""
    train = config.train
    frames = [clip_set.frames[i] for i in idx]
    if train.inner_val_share == 0:
        run = _fit(DeviceClips(frames, device), labels, config, device,
                   epochs=train.epochs, desc=desc, progress=progress)
        return _Outcome(run, None, None, None)
    fit_pos, val_pos = inner_split(clip_set.subjects[idx], train.inner_val_share, train.seed)
    val_clips = DeviceClips([frames[i] for i in val_pos], device)
    watch_test = train.select_epoch and not refit and test_clips is not None
    monitors = [val_clips] + ([test_clips] if watch_test else [])
    if not train.select_epoch:
        monitors = []
    inner = _fit(DeviceClips([frames[i] for i in fit_pos], device), labels[fit_pos], config, device,
                 epochs=train.epochs, desc=f"{desc} inner", progress=progress, monitors=monitors)
    val_probs = inner.monitors[0].probs if train.select_epoch else [
        _predict(inner.engine, val_clips, config.data.n_frames, labels.shape[1])
    ]
    thresholds, epoch = _choose(val_probs, labels[val_pos], config, train.select_epoch)
    best_epoch = epoch if train.select_epoch else None
    if not refit:
        test_probs = inner.monitors[1].probs[epoch - 1] if watch_test else None
        return _Outcome(inner, thresholds, best_epoch, test_probs)
    final = _fit(DeviceClips(frames, device), labels, config, device,
                 epochs=epoch if train.select_epoch else train.epochs, desc=desc, progress=progress)
    return _Outcome(final, thresholds, best_epoch, None)


def train_fold(
    train_set: ClipSet,
    test_set: ClipSet,
    fold: Fold,
    config: ExperimentConfig,
    *,
    device: str = "cpu",
    progress: bool = True,
) -> FoldResult:
    """Train on ``fold.train_idx`` of ``train_set``, predict ``fold.test_idx`` of ``test_set``.

    Labels are ``ClipSet.label_matrix(fold.aus)`` of each set, so cross-domain folds train and
    test on the shared AUs. Deterministic on CPU for a given configuration.
    """
    start = time.perf_counter()
    dev = torch.device(device)
    if len(fold.train_idx) == 0 or len(fold.test_idx) == 0:
        raise ValueError(f"fold {fold.fold_id}: {len(fold.train_idx)} training and {len(fold.test_idx)} test clips")
    train_labels = train_set.label_matrix(fold.aus)[fold.train_idx]
    test_labels = test_set.label_matrix(fold.aus)[fold.test_idx]
    test_clips = DeviceClips([test_set.frames[i] for i in fold.test_idx], dev)
    if config.model.use_llm:
        base = get_base_llm(spec_from_config(config.model, precision=config.train.precision, device=device))
        log.info("fold %s: %s", fold.fold_id, llm_info(base, config.model).line())
    if dev.type == "cpu":
        retain_freed_memory()
    with _deterministic(dev):
        outcome = _train_with_inner(train_set, np.asarray(fold.train_idx), train_labels, config, dev,
                                    desc=f"fold {fold.fold_id}", progress=progress, test_clips=test_clips,
                                    refit=config.train.inner_refit)
        probs = outcome.test_probs
        if probs is None:
            probs = _predict(outcome.run.engine, test_clips, config.data.n_frames, len(fold.aus))
    return FoldResult.for_fold(
        fold,
        test_set,
        probs=probs,
        labels=np.asarray(test_labels, dtype=np.int64),
        epoch_losses=outcome.run.losses,
        inner_thresholds=outcome.inner_thresholds,
        best_epoch=outcome.best_epoch,
        duration_s=time.perf_counter() - start,
        extra={"n_train": float(len(fold.train_idx)), "n_test": float(len(fold.test_idx))},
    )


def train_full(
    train_set: ClipSet,
    config: ExperimentConfig,
    *,
    aus: tuple[int, ...] | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> TrainedModel:
    """Train on every clip of ``train_set`` (for export). Thresholds per AU come from inner
    validation when ``train.inner_val_share > 0`` (else 0.5); the returned model is then always
    retrained on every clip, whatever ``train.inner_refit`` says."""
    dev = torch.device(device)
    aus = tuple(aus or train_set.aus)
    labels = train_set.label_matrix(aus)
    if dev.type == "cpu":
        retain_freed_memory()
    with _deterministic(dev):
        outcome = _train_with_inner(train_set, np.arange(len(train_set)), labels, config, dev,
                                    desc="full", progress=progress, test_clips=None, refit=True)
    thresholds = outcome.inner_thresholds if outcome.inner_thresholds is not None else np.full(len(aus), 0.5)
    model = outcome.run.engine.trained_model()
    model.eval()
    return TrainedModel(
        model=model,
        config=config,
        aus=aus,
        thresholds={a: float(t) for a, t in zip(aus, thresholds)},
        preprocessing=dict(train_set.attrs),
        epoch_losses=outcome.run.losses,
        best_epoch=outcome.best_epoch,
        device=str(dev),
    )
