"""An exported aullm checkpoint as an MLflow pyfunc model, logged from this code file (MLflow's
models-from-code: nothing is pickled; MLflow runs this file again when the model is loaded).

Input: one or more clips of preprocessed frames, uint8 (n_clips, T, H, W) or (n_clips, T, H, W, 3), read
as the training cache was (size, colour, crop: the checkpoint's ``preprocessing``; ``aullm predict`` reads a
folder the same way). Clips of different lengths go in separate requests. Output: one row per clip with
``AU<k>_probability`` and ``AU<k>_present`` (the probability at or above the checkpoint's threshold).

Served by ``mlflow models serve -m models:/<name>/<version> --env-manager local``:
``POST /invocations {"inputs": [clip]}`` answers ``{"predictions": [{"AU1_probability": ..., ...}]}``.
Only ``aullm_core`` (carried as code with the model) and its dependencies are needed where it is served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

CHECKPOINT = "checkpoint"  # the artifact name of the checkpoint folder


class AullmClipModel(PythonModel):
    """Per-AU probabilities and decisions for clips, from a verified safetensors checkpoint."""

    def load_context(self, context: Any) -> None:
        from aullm_core.train.checkpoint import load_checkpoint

        self.trained = load_checkpoint(Path(context.artifacts[CHECKPOINT]), device="cpu")

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import numpy as np
        import pandas as pd

        from aullm_core.train.predict import binarize, predict_clips

        clips = [np.asarray(clip, dtype=np.uint8) for clip in np.asarray(model_input)]
        probs = predict_clips(self.trained, clips)
        present = binarize(self.trained, probs)
        rows = []
        for i in range(len(clips)):
            row: dict[str, Any] = {}
            for k, au in enumerate(self.trained.aus):
                row[f"AU{au}_probability"] = float(probs[i, k])
            for k, au in enumerate(self.trained.aus):
                row[f"AU{au}_present"] = bool(present[i, k])
            rows.append(row)
        return pd.DataFrame(rows)


mlflow.models.set_model(AullmClipModel())
