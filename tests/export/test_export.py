"""Export -> checkpoint + model card (+ MLflow registry) -> predict on a folder of frames."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image
from typer.testing import CliRunner

from aullm_core.config import ExperimentConfig
from aullm_core.data.cache import load_cache, make_cache
from aullm_core.data.splits import loso_folds
from aullm_core.data.synth import write_synthetic
from aullm_core.errors import CheckpointError
from aullm_core.train.checkpoint import load_checkpoint, verify_checkpoint
from aullm_core.train.predict import predict_clips
from aullm_core.train.result import FoldResult
from orchestration.cli.main import app
from orchestration.export.bundle import choose_row, export_best, predict_folders
from orchestration.results import tables
from orchestration.sweep.folder import SweepFolder, data_record
from orchestration.sweep.settings import SweepSettings
from orchestration.tracking.mlflow_tracker import MlflowTracker, default_tracking_uri

ROOT = Path(__file__).resolve().parents[2]


def fake_loso(clips, fold, quality: float, seed: int) -> FoldResult:
    """Stored LOSO results with known quality (the export retrains; these only rank configurations)."""
    rng = np.random.default_rng(seed)
    labels = clips.labels[fold.test_idx].astype(np.int64)
    probs = np.clip(quality * labels + (1 - quality) * rng.random(labels.shape), 0, 1)
    meta = clips.meta.iloc[fold.test_idx]
    return FoldResult(fold.fold_id, "loso", clips.aus, list(meta["clip"]), list(meta["subject"]), probs, labels,
                      [1.0], inner_thresholds=np.full(len(clips.aus), 0.5), duration_s=1.0)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> SweepSettings:
    """A small real cache and a sweep folder with two ranked configurations."""
    root = tmp_path_factory.mktemp("export")
    synth = write_synthetic("casme2", root / "synth", subjects=3, clips_per_subject=2, seed=4, progress=False)
    cache = make_cache("casme2", synth, root / "c.h5", progress=False).path
    clips = load_cache(cache)
    settings = SweepSettings(name="ex", space=ROOT / "search_spaces" / "quick.yaml", cache=cache, workdir=root,
                             n_configs=2)
    folder = SweepFolder(settings.sweep_dir)
    folder.create(settings, data_record({str(cache): clips.fingerprint}, clips.fingerprint))
    store = folder.store
    base = ExperimentConfig.preset("quick").with_overrides({"train.epochs": 2, "train.batch_size": 8})
    tracker = MlflowTracker(default_tracking_uri(root), "ex")
    tracker.start(space={}, settings={"name": "ex"})
    for number, (quality, lr) in enumerate(((0.7, 1e-3), (0.1, 1e-4))):
        config = base.with_overrides({"train.lr": lr})
        for k, fold in enumerate(loso_folds(clips)):
            result = fake_loso(clips, fold, quality, seed=k)
            store.put(config.fingerprint(), "loso", fold.fold_id, result, config.model_dump(mode="json"))
        results = store.results(config.fingerprint(), "loso")
        tracker.log_config(config.fingerprint(), config.model_dump(mode="json"), results, status="complete",
                           n_folds_total=len(results), number=number, objective=settings.objective)
    tracker.finish(tables.leaderboard(store), settings.sweep_dir / "artifacts")
    return settings


def write_frames(frames: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"img{i + 1}.png")
    return folder


def test_export_predict_round_trip(sweep: SweepSettings, tmp_path: Path) -> None:
    out = tmp_path / "model"
    result = export_best(sweep.workdir, "ex", out, register=True, progress=False)
    store = SweepFolder(sweep.sweep_dir).store
    best = max(store.configs(), key=lambda fp: tables.leaderboard(store).set_index("config_fp").loc[fp, "objective"])
    assert result.config_fp == best and result.rank == 1
    verify_checkpoint(out)
    card = json.loads((out / "card.json").read_text())
    assert card["config_fp"] == best and card["loso"]["paper_pooled"]["test_tuned"] is True
    assert "selection-biased" in card["selection_bias"]
    md = (out / "MODEL_CARD.md").read_text()
    assert "test-tuned" in md and "Intended use" in md and "Limitations" in md and best in md
    import yaml

    header = yaml.safe_load(md.split("---\n")[1])  # the Hugging Face front matter
    assert header["license"] == "other" and header["datasets"] == ["casme2"] and header["metrics"] == ["f1"]
    (entry,) = header["model-index"][0]["results"]
    assert entry["metrics"][0]["value"] == pytest.approx(card["objective_value"], abs=1e-4)
    assert "synthetic" in entry["dataset"]["name"] and "**Synthetic.**" in md  # the data's provenance, stated
    assert "baseline: all-positive" in md and "95% CI" in md and "arXiv" in md and "```bibtex" in md
    assert str(sweep.workdir) not in md and str(tmp_path) not in md and "/tmp" not in md  # no machine paths
    low, high = card["objective_interval"]
    assert low <= card["objective_value"] <= high

    # Registered in MLflow: a version whose source is the logged checkpoint folder.
    client = MlflowClient(default_tracking_uri(sweep.workdir))
    run_id, version = result.registered
    mv = client.get_model_version("aullm-ex", str(version))
    assert mv.run_id == run_id and client.get_run(run_id).info.status == "FINISHED"
    assert mv.source.endswith("/model")
    assert "95% CI" in mv.description and "Selection-biased" in mv.description
    assert client.get_run(run_id).data.params["train.lr"] == str(ExperimentConfig.model_validate(
        store.configs()[best]).train.lr)
    config_run = client.search_runs([client.get_run(run_id).info.experiment_id],
                                    f"tags.`aullm.level` = 'config' and tags.`aullm.config_fp` = '{result.config_fp}'")
    assert mv.tags["aullm.config_run"] == config_run[0].info.run_id and config_run[0].info.run_id in mv.description
    assert float(mv.tags["loso_objective"]) == pytest.approx(result.card["objective_value"], abs=1e-4)

    # Predict on a folder of frames == predict on the cached clip (same preprocessing and sampling).
    clips = load_cache(sweep.cache)
    folder = write_frames(clips.frames[0], tmp_path / "clip")
    table = predict_folders(out, [folder])
    trained = load_checkpoint(out)
    ref = predict_clips(trained, [clips.frames[0]])[0]
    np.testing.assert_allclose(table["probability"].to_numpy(), ref, atol=1e-6)
    assert table["au"].tolist() == [f"AU{a}" for a in trained.aus]
    thresholds = np.array([trained.thresholds[a] for a in trained.aus])
    assert table["present"].tolist() == (ref >= thresholds).tolist()

    cli = CliRunner().invoke(app, ["predict", "--model", str(out), "--clip", str(folder), "--format", "json"])
    assert cli.exit_code == 0, cli.output
    payload = json.loads(cli.output)
    (clip,) = payload["clips"]
    assert clip["n_frames"] == len(clips.frames[0])
    assert clip["aus"]["AU1"]["probability"] == pytest.approx(ref[trained.aus.index(1)], abs=1e-6)

    # A clip shorter than the frames the model samples is predicted, with a warning.
    short = write_frames(clips.frames[0][:1], tmp_path / "short")
    warned = CliRunner().invoke(app, ["predict", "--model", str(out), "--clip", str(short), "--format", "json"])
    assert warned.exit_code == 0 and "warning:" in warned.stderr and "1 frame(s), fewer than" in warned.stderr
    assert "warning" not in cli.stderr

    # An altered checkpoint is refused with one line.
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(CheckpointError):
        predict_folders(out, [folder])
    bad = CliRunner().invoke(app, ["predict", "--model", str(out), "--clip", str(folder)])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "SHA-256" in bad.output


def test_export_refuses_incomplete_and_foreign_folders(sweep: SweepSettings, tmp_path: Path) -> None:
    board = tables.leaderboard(SweepFolder(sweep.sweep_dir).store, n_folds_total=4)  # nobody has 4 folds
    with pytest.raises(ValueError, match="only configurations with every LOSO fold"):
        choose_row(board, 1)
    with pytest.raises(ValueError, match="ranks 1..2"):
        choose_row(tables.leaderboard(SweepFolder(sweep.sweep_dir).store), 3)
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    result = CliRunner().invoke(app, ["export", "--sweep", "ex", "--workdir", str(sweep.workdir),
                                      "--out", str(foreign)])
    assert result.exit_code == 2 and "not empty" in result.output
    assert (foreign / "keep.txt").read_text() == "mine"


def test_a_reexport_killed_while_saving_keeps_the_previous_model(sweep: SweepSettings, tmp_path: Path) -> None:
    """The export process is SIGKILLed while it writes the new checkpoint: the previous model stays whole
    and loadable, and the next export cleans up and replaces it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "model"
    export_best(sweep.workdir, "ex", out, progress=False)
    before = json.loads((out / "manifest.json").read_text())
    command = [sys.executable, "-c", "from orchestration.cli.main import main; main()", "export", "--sweep", "ex",
               "--out", str(out), "--workdir", str(sweep.workdir), "--rank", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    staging: list[Path] = []
    while time.time() < deadline and proc.poll() is None:
        staging = [p for p in tmp_path.glob(".model.staging-*") if any(p.iterdir())]
        if staging:
            break
        time.sleep(0.005)
    assert staging, proc.communicate()[0][-2000:] if proc.poll() is not None else "the export never started writing"
    os.kill(proc.pid, signal.SIGKILL)  # mid-save
    proc.wait(30)
    assert json.loads((out / "manifest.json").read_text()) == before
    verify_checkpoint(out)
    assert load_checkpoint(out).config.fingerprint() == json.loads((out / "card.json").read_text())["config_fp"]

    again = export_best(sweep.workdir, "ex", out, rank=2, progress=False)
    assert again.rank == 2 and json.loads((out / "card.json").read_text())["rank"] == 2
    verify_checkpoint(out)
    assert not list(tmp_path.glob(".model.*")) and not [p for p in out.iterdir() if p.name.startswith(".")]


def test_an_export_into_a_folder_holding_only_a_temp_file_works(sweep: SweepSettings, tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / ".model.safetensors.x1y2.tmp").write_bytes(b"\0" * 1024)  # what a killed older export left
    export_best(sweep.workdir, "ex", out, progress=False)
    verify_checkpoint(out)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def _serve(model_uri: str, tracking_uri: str, port: int, log: Path):
    """``mlflow models serve`` of a registered model on 127.0.0.1, in its own process group."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_DISABLE_TELEMETRY="true",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    return subprocess.Popen([str(mlflow_bin), "models", "serve", "-m", model_uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_the_registered_version_loads_through_mlflow_and_serves_what_aullm_predict_says(
        sweep: SweepSettings, tmp_path: Path) -> None:
    import os
    import signal
    import socket
    import time
    import urllib.request

    import mlflow

    from aullm_core.data.preprocess import frame_options, list_frames, load_frames

    out = tmp_path / "model"
    result = export_best(sweep.workdir, "ex", out, register=True, model_name="aullm-served", progress=False)
    _, version = result.registered
    uri = default_tracking_uri(sweep.workdir)
    from orchestration.tracking.registry import register_checkpoint

    assert register_checkpoint(uri, out, model_name="aullm-served")[1] == version + 1  # a new version each time
    clips = load_cache(sweep.cache)
    folder = write_frames(clips.frames[1], tmp_path / "clip")
    cli = CliRunner().invoke(app, ["predict", "--model", str(out), "--clip", str(folder), "--format", "json"])
    assert cli.exit_code == 0, cli.output
    said = json.loads(cli.output)["clips"][0]["aus"]
    trained = load_checkpoint(out)
    clip = load_frames(list_frames(folder), **frame_options(trained.preprocessing))  # as aullm predict reads it

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/aullm-served/{version}")
    assert model.metadata.signature is not None and "uint8" in str(model.metadata.signature.inputs)
    local = model.predict(clip[None])
    for au in trained.aus:
        assert local.loc[0, f"AU{au}_probability"] == pytest.approx(said[f"AU{au}"]["probability"], abs=1e-6)
        assert bool(local.loc[0, f"AU{au}_present"]) == said[f"AU{au}"]["present"]
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/aullm-served/{version}", dst_path=str(tmp_path / "dl")))
    assert (model_dir / "MLmodel").is_file() and not list(model_dir.rglob("*.pkl"))  # models-from-code: no pickle

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = _serve(f"models:/aullm-served/{version}", uri, port, tmp_path / "serve.log")
    try:
        deadline = time.time() + 240
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", method="POST",
                                         data=json.dumps({"inputs": clip[None].tolist()}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as reply:
            (served,) = json.loads(reply.read())["predictions"]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    for au in trained.aus:
        assert served[f"AU{au}_probability"] == pytest.approx(said[f"AU{au}"]["probability"], abs=1e-6)
        assert served[f"AU{au}_present"] == said[f"AU{au}"]["present"]
