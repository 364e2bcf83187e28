"""The GPU path: half-precision frozen LLM, fp32 trained parts, autocast, no syncs in the step loop.

Skipped without CUDA (``-m gpu`` selects them on a GPU machine).
"""

import numpy as np
import pytest
import torch
from _train_data import tiny_clipset

from aullm_core.config import ExperimentConfig
from aullm_core.data.splits import loso_folds
from aullm_core.train.engine_torch import TorchEngine
from aullm_core.train.fold import build_model, seed_everything, train_epoch, train_fold
from aullm_core.train.losses import faithful_loss
from aullm_core.train.sampling import DeviceClips

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CUDA = torch.device("cuda")


def _config(precision: str, **overrides) -> ExperimentConfig:
    base = {"train.epochs": 6, "train.inner_val_share": 0.0, "train.precision": precision}
    return ExperimentConfig.preset("quick").with_overrides({**base, **overrides})


@pytest.fixture(scope="module")
def clips():
    return tiny_clipset(subjects=3, clips_per_subject=4)


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_frozen_llm_half_trained_parts_fp32(precision, dtype):
    model = build_model(_config(precision), 3, CUDA)
    frozen = [p for p in model.llm.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == dtype and p.is_cuda for p in frozen)
    trained = model.trainable_parameters()
    assert trained and all(p.dtype == torch.float32 and p.is_cuda for p in trained)
    engine = TorchEngine(model, _config(precision).train, CUDA)
    assert (engine.scaler is not None) == (precision == "fp16")
    x = torch.rand(4, 6, 64, 64, device=CUDA) * 255
    logits = engine.forward(x)
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    engine.step(faithful_loss(logits, torch.ones_like(logits)))
    assert all(torch.isfinite(p).all() for p in trained)


@pytest.mark.parametrize("precision,epochs", [("bf16", 6), ("fp16", 12)])  # fp16 may skip early steps
def test_half_precision_fold_learns(clips, precision, epochs):
    fold = loso_folds(clips)[0]
    cfg = _config(precision, **{"train.epochs": epochs})
    result = train_fold(clips, clips, fold, cfg, device="cuda", progress=False)
    assert np.isfinite(result.probs).all()
    assert np.mean(result.epoch_losses[-2:]) < np.mean(result.epoch_losses[:2])


def test_step_loop_never_synchronises_with_the_host(clips):
    config = _config("bf16", **{"train.batch_size": 4})
    seed_everything(1)
    model = build_model(config, 3, CUDA)
    engine = TorchEngine(model, config.train, CUDA)
    data = DeviceClips(clips.frames, CUDA)
    y = torch.as_tensor(clips.labels, dtype=torch.float32, device=CUDA)
    generator = torch.Generator(device=CUDA).manual_seed(0)
    train_epoch(engine, data, y, config, generator, faithful_loss)  # warm-up (lazy inits may sync)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        total = train_epoch(engine, data, y, config, generator, faithful_loss)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert total.is_cuda and torch.isfinite(total)


def test_shared_prompt_close_to_naive_in_bf16():
    config = _config("bf16")
    seed_everything(0)
    model = build_model(config, 3, CUDA).eval()
    x = torch.rand(8, 6, 64, 64, device=CUDA) * 255
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        shared = model(x)
        model.shared_prompt_kv = False
        naive = model(x)
    assert (shared - naive).abs().max().item() < 5e-2


def test_cuda_fold_repeats_with_the_same_seed(clips):
    fold = loso_folds(clips)[1]
    cfg = _config("bf16", **{"train.epochs": 2})
    a = train_fold(clips, clips, fold, cfg, device="cuda", progress=False)
    b = train_fold(clips, clips, fold, cfg, device="cuda", progress=False)
    np.testing.assert_allclose(a.probs, b.probs, atol=2e-2)


def _no_dropout(**overrides) -> ExperimentConfig:
    return _config("bf16", **{"model.dropout": 0.0, "model.lora.dropout": 0.0, **overrides})


def _steps(cuda_graphs: bool, n_steps: int = 7) -> tuple[torch.Tensor, list[torch.Tensor], TorchEngine]:
    config = _no_dropout(**{"train.cuda_graphs": cuda_graphs})
    seed_everything(0)
    model = build_model(config, 3, CUDA)
    engine = TorchEngine(model, config.train, CUDA)
    engine.train()
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(n_steps):
        x = (torch.rand(4, 6, 64, 64, generator=g) * 255).to(CUDA)
        y = (torch.rand(4, 3, generator=g) < 0.4).float().to(CUDA)
        losses.append(engine.train_step(x, y, faithful_loss))
    return torch.stack(losses).cpu(), [p.detach().clone() for p in model.trainable_parameters()], engine


def test_graphed_steps_match_eager_steps():
    """Replays of the captured step train the model as eager steps do (fresh batches every step)."""
    graph_losses, graph_params, engine = _steps(True)
    eager_losses, eager_params, eager = _steps(False)
    assert engine.graphed is not None and engine.graphed.replays == 5  # 2 eager steps, then capture + replay
    assert eager.graphed is None
    torch.testing.assert_close(graph_losses, eager_losses, rtol=2e-3, atol=2e-3)
    flat = [torch.cat([p.flatten() for p in params]) for params in (graph_params, eager_params, _initial_params())]
    moved, apart = (flat[0] - flat[2]).norm(), (flat[0] - flat[1]).norm()
    assert moved > 0  # the updates after the capture really happened...
    assert apart < 0.05 * moved  # ...and are those of eager steps (Adam amplifies bf16 rounding a little)


def _initial_params() -> list[torch.Tensor]:
    seed_everything(0)
    return [p.detach().clone() for p in build_model(_no_dropout(), 3, CUDA).trainable_parameters()]


def test_graphed_fold_with_a_short_last_batch_matches_eager(clips):
    """8 training clips in batches of 3: shapes 3, 3, 2 alternate, each shape with its own graph."""
    fold = loso_folds(clips)[0]
    results = []
    for graphs in (True, False):
        cfg = _no_dropout(**{"train.cuda_graphs": graphs, "train.batch_size": 3, "train.epochs": 5})
        results.append(train_fold(clips, clips, fold, cfg, device="cuda", progress=False))
    np.testing.assert_allclose(results[0].epoch_losses, results[1].epoch_losses, rtol=5e-3)
    np.testing.assert_allclose(results[0].probs, results[1].probs, atol=2e-2)


def test_compiled_graphed_fold_matches_eager(clips):
    """train.compile (encoder, projector, each decoder layer) under CUDA graphs trains like eager."""
    fold = loso_folds(clips)[2]
    results = []
    for fast in (True, False):
        cfg = _no_dropout(**{"train.cuda_graphs": fast, "train.compile": fast, "train.batch_size": 4,
                             "train.epochs": 4})
        results.append(train_fold(clips, clips, fold, cfg, device="cuda", progress=False))
    np.testing.assert_allclose(results[0].epoch_losses, results[1].epoch_losses, rtol=2e-2)
    np.testing.assert_allclose(results[0].probs, results[1].probs, atol=5e-2)


def test_unfolded_conv_on_cuda_matches_cudnn_conv():
    from aullm_core.model.encoder import unfolded_conv2d

    x = torch.rand(64, 1, 64, 64, device=CUDA)
    w = torch.randn(32, 1, 5, 5, device=CUDA)
    ref = torch.nn.functional.conv2d(x.double(), w.double())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ours = unfolded_conv2d(x, w)
    assert ours.dtype == torch.bfloat16
    assert ((ours.double() - ref).norm() / ref.norm()).item() < 1e-2
