"""MLflow's model registry: an exported checkpoint folder logged as artifacts and registered as a version."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from mlflow.exceptions import MlflowException

from orchestration.tracking.mlflow_tracker import TAG_CONFIG, TAG_LEVEL, TAG_PARENT, TAG_SWEEP, MlflowTracker

__all__ = ["register_checkpoint"]


def _walk(root: Path) -> Iterator[Path]:
    yield from (p for p in sorted(root.rglob("*")) if p.is_file())


def register_checkpoint(tracking_uri: str, checkpoint_dir: Path, *, model_name: str,
                        sweep_name: str | None = None, tags: Mapping[str, str] | None = None,
                        metrics: Mapping[str, float] | None = None, experiment: str = "aullm") -> tuple[str, int]:
    """Log a checkpoint folder as a run's artifacts and register it as a new model version.

    The folder is registered as-is (safetensors + manifest + model card): no pickled flavour. The
    version carries ``metrics`` (its LOSO and cross-domain scores) as tags, and, when ``tags`` name
    the configuration (``aullm.config_fp``) of a tracked sweep, a link to that configuration's run.
    Returns (run id, model version).
    """
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
        tracker._log(run_id, metrics=dict(metrics or {}))
        for path in _walk(Path(checkpoint_dir)):
            sub = path.parent.relative_to(checkpoint_dir)
            artifact_path = "checkpoint" if str(sub) == "." else f"checkpoint/{sub.as_posix()}"
            client.log_artifact(run_id, str(path), artifact_path)
        try:
            client.create_registered_model(model_name)
        except MlflowException as err:
            if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(err):
                raise
        source = f"{client.get_run(run_id).info.artifact_uri}/checkpoint"
        version_tags = {**dict(tags or {}), **{k: f"{v:.4f}" for k, v in (metrics or {}).items()}}
        config_fp = (tags or {}).get(TAG_CONFIG)
        config_run = tracker._find_config_run(config_fp) if sweep_name and config_fp else None
        description = None
        if config_run:
            version_tags["aullm.config_run"] = config_run
            scores = ", ".join(f"{k} {v:.3f}" for k, v in (metrics or {}).items())
            description = (f"Configuration `{config_fp}` of sweep `{sweep_name}` ({scores}); its LOSO folds and "
                           f"per-AU F1: [configuration run](#/experiments/{tracker.experiment_id}/runs/{config_run}).")
        mv = client.create_model_version(model_name, source=source, run_id=run_id, tags=version_tags,
                                         description=description)
        version.append(int(mv.version))

    tracker._ended(run_id, body)
    return run_id, version[0]
