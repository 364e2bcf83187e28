"""MLflow's model registry: an exported checkpoint registered as a version MLflow can load and serve.

The version is an MLflow pyfunc model logged from code (``pyfunc_model.py``: no pickle), with the
checkpoint folder as its artifact, ``aullm_core`` as its code and a tensor signature, so
``mlflow.pyfunc.load_model("models:/<name>/<version>")`` and ``mlflow models serve`` work on it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException

from orchestration.tracking.mlflow_tracker import TAG_CONFIG, TAG_LEVEL, TAG_PARENT, TAG_SWEEP, MlflowTracker

__all__ = ["MODEL_ARTIFACT", "register_checkpoint"]

MODEL_ARTIFACT = "model"
_REQUIREMENTS = ("mlflow", "torch", "numpy", "pandas", "safetensors", "transformers", "peft", "pillow", "pydantic",
                 "pyyaml")


def _requirements() -> list[str]:
    """What serving the model needs, pinned to the versions it was exported with."""
    out = []
    for name in _REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def _signature(checkpoint_dir: Path) -> tuple[object, np.ndarray]:
    """The model's signature and an input example from the checkpoint's stored configuration: a clip of
    uint8 frames at the cache's size (and colour), any number of frames."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    from aullm_core.data.preprocess import frame_options
    from aullm_core.train.checkpoint import CONFIG_FILE

    meta = json.loads((checkpoint_dir / CONFIG_FILE).read_text())
    options = frame_options(meta.get("preprocessing") or {})
    side = int(meta.get("frame_size") or options["size"])
    frame = (side, side, 3) if options["color"] else (side, side)
    n_frames = int(meta["config"]["data"]["n_frames"])
    aus = [int(a) for a in meta["aus"]]
    outputs = Schema([ColSpec("double", f"AU{a}_probability") for a in aus] + [ColSpec("boolean", f"AU{a}_present") for a in aus])
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, *frame))]), outputs=outputs)
    return signature, np.zeros((1, n_frames, *frame), dtype=np.uint8)


def _save_pyfunc(checkpoint_dir: Path, into: Path) -> Path:
    """The checkpoint as an MLflow pyfunc model folder (MLmodel, the code file, the checkpoint, aullm_core)."""
    import mlflow.pyfunc

    import aullm_core
    from orchestration.tracking import pyfunc_model

    signature, example = _signature(checkpoint_dir)
    target = into / MODEL_ARTIFACT
    mlflow.pyfunc.save_model(
        str(target), python_model=pyfunc_model.__file__,
        artifacts={pyfunc_model.CHECKPOINT: str(checkpoint_dir)},
        code_paths=[str(Path(aullm_core.__file__).parent)], signature=signature, input_example=example,
        pip_requirements=_requirements(),
    )
    return target


def register_checkpoint(tracking_uri: str, checkpoint_dir: Path, *, model_name: str,
                        sweep_name: str | None = None, tags: Mapping[str, str] | None = None,
                        metrics: Mapping[str, float] | None = None, description: str | None = None,
                        params: Mapping[str, str] | None = None, experiment: str = "aullm") -> tuple[str, int]:
    """Log a checkpoint as an MLflow pyfunc model in an export run and register it as a new version.

    The run carries ``params`` (the configuration) and ``metrics`` (its LOSO and cross-domain scores); the
    version carries the metrics as tags, ``description`` and, when ``tags`` name the configuration
    (``aullm.config_fp``) of a tracked sweep, a link to that configuration's run. Returns (run id, version).
    """
    checkpoint_dir = Path(checkpoint_dir)
    tracker = MlflowTracker(tracking_uri, sweep_name or "export", experiment)
    client = tracker.client
    run_tags = {TAG_LEVEL: "export", "aullm.model_name": model_name, **(tags or {})}
    if sweep_name:
        run_tags[TAG_SWEEP] = sweep_name
        sweep_run = tracker._find_sweep_run()
        if sweep_run:
            run_tags[TAG_PARENT] = sweep_run
    run_id = client.create_run(tracker.experiment_id, tags=run_tags, run_name=f"export-{model_name}").info.run_id
    version: list[int] = []

    def body() -> None:
        tracker._log(run_id, metrics=dict(metrics or {}), params=dict(params or {}))
        with tempfile.TemporaryDirectory(prefix="aullm-pyfunc-") as tmp:
            client.log_artifacts(run_id, str(_save_pyfunc(checkpoint_dir, Path(tmp))), MODEL_ARTIFACT)
        try:
            client.create_registered_model(model_name, description="AU-LLM Action Unit detector exported by aullm "
                                           "(an MLflow pyfunc model: per-AU probabilities and decisions for a clip).")
        except MlflowException as err:
            if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
        version_tags = {**dict(tags or {}), **{k: f"{v:.4f}" for k, v in (metrics or {}).items()}}
        config_fp = (tags or {}).get(TAG_CONFIG)
        config_run = tracker._find_config_run(config_fp) if sweep_name and config_fp else None
        text = description or ""
        if config_run:
            version_tags["aullm.config_run"] = config_run
            text += (f"\n\nIts LOSO folds by subject and per-AU F1: "
                     f"[configuration run](#/experiments/{tracker.experiment_id}/runs/{config_run}).")
        mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=version_tags,
                                         description=text.strip() or None)
        version.append(int(mv.version))

    tracker._ended(run_id, body)
    return run_id, version[0]
