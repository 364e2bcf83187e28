"""Checkpoints: safetensors weights, configuration JSON and a SHA-256 manifest; no pickle anywhere.

A checkpoint folder holds:
- ``model.safetensors``: LED, 3D-CNN (with BatchNorm statistics), projector and head;
- ``adapter_model.safetensors``: the LoRA adapter (peft's adapter state dict), when an LLM is used;
- ``config.json``: the ExperimentConfig (science only: no device or paths of this machine), AUs,
  thresholds and the cache's preprocessing parameters;
- ``card.json``: an optional free-form model card;
- ``manifest.json``: SHA-256 and size of every other file, written last.
Loading verifies the manifest first and raises ``CheckpointError`` on any missing or altered file.
The frozen base LLM is not stored: ``config.model.llm`` names it ('tiny' is rebuilt from its seed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from aullm_core.atomic import atomic_path, atomic_write_text
from aullm_core.config import ExperimentConfig
from aullm_core.errors import CheckpointError, one_line
from aullm_core.model.config import FRAME_SIZE
from aullm_core.train.fold import TrainedModel, build_model

FORMAT = "aullm-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "card.json"
MANIFEST_FILE = "manifest.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))


def save_checkpoint(trained: TrainedModel, out_dir: Path, *, card: dict | None = None) -> Path:
    """Write ``trained`` to ``out_dir`` (created if needed); every file atomically, manifest last."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in trained.model.trained_state_dict().items()}
    model_state = {k: v for k, v in state.items() if not k.startswith("lora.")}
    adapter = {k[len("lora."):]: v for k, v in state.items() if k.startswith("lora.")}
    files = [MODEL_FILE, CONFIG_FILE]
    with atomic_path(out_dir / MODEL_FILE) as tmp:
        save_file(model_state, str(tmp), metadata={"format": FORMAT})
    if adapter:
        with atomic_path(out_dir / ADAPTER_FILE) as tmp:
            save_file(adapter, str(tmp), metadata={"format": FORMAT})
        files.append(ADAPTER_FILE)
    else:
        (out_dir / ADAPTER_FILE).unlink(missing_ok=True)
    _write_json(out_dir / CONFIG_FILE, {
        "config": trained.config.model_dump(mode="json"),
        "aus": list(trained.aus),
        "thresholds": {f"AU{a}": t for a, t in trained.thresholds.items()},
        "preprocessing": _json_safe(trained.preprocessing),
        "frame_size": trained.model.encoder.frame_size,
        "best_epoch": trained.best_epoch,
    })
    if card is not None:
        _write_json(out_dir / CARD_FILE, _json_safe(card))
        files.append(CARD_FILE)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "files": {name: {"sha256": _sha256(out_dir / name), "bytes": (out_dir / name).stat().st_size}
                  for name in sorted(files)},
    }
    _write_json(out_dir / MANIFEST_FILE, manifest)
    return out_dir


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check the manifest against the files; returns the manifest or raises CheckpointError."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{manifest_path}: no manifest (not an aullm checkpoint, or an interrupted save)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest_path}: unreadable manifest ({err})") from None
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise CheckpointError(f"{manifest_path}: expected format {FORMAT} version {VERSION}")
    for required in (MODEL_FILE, CONFIG_FILE):
        if required not in files:
            raise CheckpointError(f"{manifest_path}: lists no {required}")
    for name, entry in files.items():
        file = path / name
        if Path(name).name != name:
            raise CheckpointError(f"{manifest_path}: file name {name!r} leaves the checkpoint folder")
        if not file.is_file():
            raise CheckpointError(f"{file}: listed in the manifest but missing")
        if _sha256(file) != entry.get("sha256"):
            raise CheckpointError(f"{file}: SHA-256 differs from the manifest (file altered)")
    return manifest


def load_checkpoint(path: Path, *, device: str = "cpu") -> TrainedModel:
    """Verify and load a checkpoint written by ``save_checkpoint`` (safetensors only, no pickle)."""
    path = Path(path)
    manifest = verify_checkpoint(path)
    try:
        meta = json.loads((path / CONFIG_FILE).read_text())
        config = ExperimentConfig.model_validate(meta["config"])
        aus = tuple(int(a) for a in meta["aus"])
        thresholds = {a: float(meta["thresholds"][f"AU{a}"]) for a in aus}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / CONFIG_FILE}: invalid ({' '.join(str(err).split())[:200]})") from None
    state = dict(load_file(str(path / MODEL_FILE)))
    if ADAPTER_FILE in manifest["files"]:
        state.update({f"lora.{k}": v for k, v in load_file(str(path / ADAPTER_FILE)).items()})
    dev = torch.device(device)
    side = meta.get("frame_size") or (meta.get("preprocessing") or {}).get("size") or FRAME_SIZE  # older: the cache's
    model = build_model(config, len(aus), dev, frame_size=int(side))
    try:
        model.load_trained_state({k: v.to(dev) for k, v in state.items()})
    except (KeyError, RuntimeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the configuration ({one_line(err, limit=200)})") from None
    model.eval()
    return TrainedModel(
        model=model,
        config=config,
        aus=aus,
        thresholds=thresholds,
        preprocessing=dict(meta.get("preprocessing") or {}),
        best_epoch=meta.get("best_epoch"),
        device=str(dev),
    )
