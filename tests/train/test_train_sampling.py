"""Temporal sampling (method.md section 2) and the on-device clip store."""

import numpy as np
import pytest
import torch

from aullm_core.train.sampling import (
    DeviceClips,
    eval_indices,
    eval_indices_np,
    to_grey,
    train_indices,
    train_indices_np,
)


def test_eval_indices_match_numpy_round_linspace():
    lengths = np.arange(2, 200)
    got = eval_indices(torch.as_tensor(lengths), 6).numpy()
    want = np.stack([np.round(np.linspace(0, t - 1, 6)).astype(int) for t in lengths])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(eval_indices_np(11, 6), [0, 2, 4, 6, 8, 10])


def test_train_windows_start_at_onset_and_end_in_range():
    g = torch.Generator().manual_seed(0)
    lengths = torch.full((4000,), 20)
    idx = train_indices(lengths, 6, 6, g)
    assert (idx[:, 0] == 0).all()
    ends = idx[:, -1]
    assert ends.min().item() == 6 and ends.max().item() == 18  # U{6..T-2}
    counts = torch.bincount(ends, minlength=19)[6:19].float()
    assert counts.min() > 0.7 * counts.mean()  # roughly uniform over the 13 ends
    for row in idx[:50]:
        expected = np.round(np.linspace(0, int(row[-1]), 6)).astype(int)
        np.testing.assert_array_equal(row.numpy(), expected)


def test_train_numpy_reference_agrees_on_range():
    rng = np.random.default_rng(0)
    ends = {int(train_indices_np(20, 6, 6, rng)[-1]) for _ in range(500)}
    assert ends == set(range(6, 19))


def test_short_clips_stay_inside():
    g = torch.Generator().manual_seed(1)
    lengths = torch.tensor([1, 2, 3, 5, 7, 8])
    idx = train_indices(lengths, 6, 6, g)
    assert (idx >= 0).all() and (idx < lengths[:, None]).all()
    assert (eval_indices(lengths, 6) < lengths[:, None]).all()


def test_device_clips_gather_matches_numpy_indexing():
    rng = np.random.default_rng(0)
    clips = [rng.integers(0, 256, size=(t, 64, 64), dtype=np.uint8) for t in (9, 14, 30)]
    store = DeviceClips(clips, "cpu")
    assert store.frames.dtype == torch.uint8 and store.frames.shape[0] == 9 + 14 + 30
    idx = torch.tensor([2, 0])
    batch = store.eval_batch(idx, 6)
    assert batch.shape == (2, 6, 64, 64) and batch.dtype == torch.float32
    np.testing.assert_array_equal(batch[0].numpy(), clips[2][eval_indices_np(30, 6)])
    np.testing.assert_array_equal(batch[1].numpy(), clips[0][eval_indices_np(9, 6)])
    assert batch.max() > 200  # raw 0..255, not normalised


def test_colour_frames_become_grey_like_pillow():
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(2, 8, 8, 3), dtype=np.uint8)
    grey = to_grey(rgb)
    pil = np.stack([np.asarray(Image.fromarray(f).convert("L")) for f in rgb])
    assert np.abs(grey.astype(int) - pil.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="shape"):
        to_grey(np.zeros((2, 8, 8, 4), dtype=np.uint8))
