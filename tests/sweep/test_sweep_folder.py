"""The sweep folder's rules for a resume, checked before Ray or MLflow start."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweep_helpers import cheap_hooks, write_tiny_cache

from aullm_core.config import FINGERPRINT_VERSION
from aullm_core.errors import ConfigError
from orchestration.sweep.folder import SweepFolder, data_record
from orchestration.sweep.run import run_sweep
from orchestration.sweep.settings import SweepSettings

SPACE = "base: quick\nparams:\n  train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"


def _folder(tmp_path: Path) -> tuple[SweepSettings, SweepFolder]:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    cache = write_tiny_cache(tmp_path / "c.npz", subjects=3, clips_per_subject=2)
    settings = SweepSettings(name="old", space=space, cache=cache, workdir=tmp_path, tracking_uri="none")
    return settings, SweepFolder(settings.sweep_dir)


def test_a_sweep_of_an_older_aullm_is_refused_on_resume(tmp_path: Path) -> None:
    """A folder as the aullm before the data-keyed store left it: sweep.json, no data.json."""
    settings, folder = _folder(tmp_path)
    folder.path.mkdir(parents=True)
    folder.settings_file.write_text(settings.model_dump_json())
    (folder.path / "space.yaml").write_text(SPACE)
    with pytest.raises(ConfigError, match=r"data.json: missing; this sweep was made by an older aullm") as err:
        run_sweep(settings.model_copy(update={"resume": True}), cheap_hooks(tracked=True), progress=False)
    assert "\n" not in str(err.value) and not folder.ray.exists()  # refused before Ray started


@pytest.mark.parametrize("damage", ["version", "garbage"])
def test_another_fingerprint_version_or_a_damaged_data_record_is_refused(tmp_path: Path, damage: str) -> None:
    settings, folder = _folder(tmp_path)
    record = data_record({str(settings.cache): "0" * 16}, "0" * 16)
    if damage == "version":
        record = record.model_copy(update={"fingerprint_version": FINGERPRINT_VERSION - 1})
    folder.path.mkdir(parents=True)
    folder.create(settings, record)
    if damage == "garbage":
        folder.data_file.write_text('{"fingerprint_version": 2, "data_k')
    needle = "fingerprinted by version" if damage == "version" else "data.json: damaged"
    with pytest.raises(ConfigError, match=needle):
        run_sweep(settings.model_copy(update={"resume": True}), cheap_hooks(tracked=True), progress=False)
