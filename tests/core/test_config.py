"""What the configuration fingerprint covers: every field that decides a fold's numbers, nothing else."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aullm_core.config import RUNTIME_FIELDS, ExperimentConfig

#: Pinned. A change here means every stored fold of every sweep is orphaned: if it is meant (a field
#: added, removed or changed in meaning), bump FINGERPRINT_VERSION in aullm_core/config.py and update
#: these values in the same commit, so old sweeps are refused on resume rather than silently retrained.
PINNED = {"paper": "fff71d55d5d4d633", "quick": "d5a0d180d2d678f2"}


@pytest.mark.parametrize("preset", sorted(PINNED))
def test_the_fingerprint_of_each_preset_is_pinned(preset: str) -> None:
    assert ExperimentConfig.preset(preset).fingerprint() == PINNED[preset]


@pytest.mark.parametrize(("section", "key"), [(s, k) for s, keys in RUNTIME_FIELDS.items() for k in sorted(keys)])
def test_runtime_fields_leave_the_fingerprint_alone(section: str, key: str) -> None:
    base = ExperimentConfig.preset("quick")
    flipped = base.with_overrides({f"{section}.{key}": not getattr(getattr(base, section), key)})
    assert flipped != base and flipped.fingerprint() == base.fingerprint()


@pytest.mark.parametrize("override", [{"train.lr": 1e-4}, {"train.engine": "deepspeed"}, {"model.lora.r": 8},
                                      {"data.n_frames": 8}, {"train.precision": "fp32"}])
def test_every_science_field_changes_the_fingerprint(override: dict) -> None:
    base = ExperimentConfig.preset("quick")
    assert base.with_overrides(override).fingerprint() != base.fingerprint()


@pytest.mark.parametrize("n_frames", [2, 3])
def test_too_few_frames_for_the_cnn_are_refused_on_load(n_frames: int) -> None:
    with pytest.raises(ValidationError, match="n_frames"):
        ExperimentConfig.preset("quick").with_overrides({"data.n_frames": n_frames})
