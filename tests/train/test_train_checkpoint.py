"""Checkpoints: round trip gives the same predictions; altered or missing files are refused."""

import json

import numpy as np
import pytest
from _train_data import tiny_clipset

from aullm_core.config import ExperimentConfig
from aullm_core.errors import CheckpointError
from aullm_core.train.checkpoint import load_checkpoint, save_checkpoint
from aullm_core.train.fold import train_full
from aullm_core.train.predict import binarize, predict_clips


@pytest.fixture(scope="module")
def clips():
    return tiny_clipset(subjects=2, clips_per_subject=3, aus=(2, 4), seed=3)


@pytest.fixture(scope="module")
def trained(clips):
    cfg = ExperimentConfig.preset("quick").with_overrides({"train.epochs": 2, "train.inner_val_share": 0.0})
    return train_full(clips, cfg, progress=False)


@pytest.fixture()
def saved(trained, tmp_path):
    return save_checkpoint(trained, tmp_path / "ckpt", card={"name": "test model", "n_clips": np.int64(6)})


def test_round_trip_gives_the_same_predictions(trained, saved, clips):
    before = predict_clips(trained, clips.frames)
    loaded = load_checkpoint(saved)
    after = predict_clips(loaded, clips.frames)
    np.testing.assert_array_equal(after, before)
    assert loaded.aus == trained.aus and loaded.thresholds == trained.thresholds
    assert loaded.config == trained.config
    assert loaded.preprocessing == {"size": 64, "color": False}
    np.testing.assert_array_equal(binarize(loaded, after), (after >= 0.5).astype(int))


def test_files_are_safetensors_json_and_manifest(saved):
    names = sorted(p.name for p in saved.iterdir())
    assert names == ["adapter_model.safetensors", "card.json", "config.json", "manifest.json", "model.safetensors"]
    manifest = json.loads((saved / "manifest.json").read_text())
    assert set(manifest["files"]) == set(names) - {"manifest.json"}
    assert all(len(e["sha256"]) == 64 for e in manifest["files"].values())
    config = json.loads((saved / "config.json").read_text())
    assert "device" not in json.dumps(config)  # no runtime settings
    assert json.loads((saved / "card.json").read_text())["n_clips"] == 6


@pytest.mark.parametrize("name", ["model.safetensors", "adapter_model.safetensors", "config.json"])
def test_altered_file_refused(saved, name):
    path = saved / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{name}: SHA-256 differs"):
        load_checkpoint(saved)


def test_missing_file_or_manifest_refused(saved):
    (saved / "adapter_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(saved)
    (saved / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no manifest"):
        load_checkpoint(saved)


def test_no_llm_checkpoint_has_no_adapter(clips, tmp_path):
    cfg = ExperimentConfig.preset("quick").with_overrides(
        {"train.epochs": 1, "train.inner_val_share": 0.0, "model.use_llm": False}
    )
    trained = train_full(clips, cfg, progress=False)
    out = save_checkpoint(trained, tmp_path / "nollm")
    assert not (out / "adapter_model.safetensors").exists()
    np.testing.assert_array_equal(predict_clips(load_checkpoint(out), clips.frames[:2]),
                                  predict_clips(trained, clips.frames[:2]))
