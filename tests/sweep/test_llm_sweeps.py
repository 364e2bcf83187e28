"""``aullm sweep`` with checkpoint folders, as a subprocess: refused before Ray starts, relative paths,
errors that no retry can fix, and a checkpoint changed under a sweep."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from llm_checkpoints import save_checkpoint
from sweep_helpers import HOOKED_AULLM, sweep_env, trainings, write_tiny_cache

SPACE = """\
base: quick
fixed: {{train.epochs: 1, model.llm: {llm}}}
params:
  train.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
"""


@pytest.fixture(scope="module")
def qwen(tmp_path_factory) -> Path:
    return save_checkpoint("qwen2", tmp_path_factory.mktemp("llm") / "qwen2")


def _sweep(tmp_path: Path, llm: str, *extra: str, cwd: Path | None = None, name: str = "s",
           fold_fn: str = "quick_fold") -> subprocess.CompletedProcess:
    space = tmp_path / f"space-{name}.yaml"
    space.write_text(SPACE.format(llm=json.dumps(llm)))
    cache = tmp_path / "c.npz"
    if not cache.exists():
        write_tiny_cache(cache, subjects=3, clips_per_subject=2)
    command = [*HOOKED_AULLM, "sweep", "--space", str(space), "--cache", str(cache), "--trials", "2", "--name", name,
               "--workdir", str(tmp_path / "work"), "--pruner", "none", "--num-cpus", "2", "--no-progress",
               "--max-failures", "2", *extra]
    return subprocess.run(command, cwd=cwd or tmp_path, env={**sweep_env(tmp_path), "AULLM_TEST_FOLD": fold_fn}, capture_output=True, text=True,
                          timeout=300, check=False)


def _one_line_refusal(run: subprocess.CompletedProcess, *needles: str) -> None:
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in run.stderr, run.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize(("case", "needles"), [
    ("no-tokenizer", ("has no tokenizer",)),
    ("missing", ("no checkpoint folder at", "relative paths are read from the current folder")),
    ("hub-id", ("not in the local Hugging Face cache", "huggingface-cli download org/absent-model")),
    ("targets", ("not modules of this qwen2 model", "--set model.lora.targets=[")),
])
def test_a_bad_checkpoint_is_refused_before_ray_starts(case, needles, qwen, tmp_path):
    llm = "ckpt"
    if case == "no-tokenizer":
        shutil.copytree(qwen, tmp_path / "ckpt")
        for path in (tmp_path / "ckpt").glob("tokenizer*"):
            path.unlink()
    elif case == "hub-id":
        llm = "org/absent-model"
    elif case == "targets":
        shutil.copytree(qwen, tmp_path / "ckpt")
    run = _sweep(tmp_path, llm) if case != "targets" else _sweep_targets(tmp_path)
    _one_line_refusal(run, *needles)
    assert not (tmp_path / "work" / "sweeps" / "s" / "ray").exists()  # refused before Ray started


def _sweep_targets(tmp_path: Path) -> subprocess.CompletedProcess:
    space = tmp_path / "space-t.yaml"
    space.write_text("base: quick\nfixed: {train.epochs: 1, model.llm: ckpt}\nparams:\n"
                     "  model.lora.targets: {type: categorical, choices: [[q_proj, v_proj], [c_attn]]}\n")
    write_tiny_cache(tmp_path / "c.npz", subjects=3, clips_per_subject=2)
    command = [*HOOKED_AULLM, "sweep", "--space", str(space), "--cache", str(tmp_path / "c.npz"), "--trials", "2",
               "--name", "s", "--workdir", str(tmp_path / "work"), "--num-cpus", "2", "--no-progress"]
    return subprocess.run(command, cwd=tmp_path, env=sweep_env(tmp_path), capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.slow
def test_a_relative_checkpoint_path_runs_and_a_changed_checkpoint_is_trained_anew_on_resume(qwen, tmp_path):
    shutil.copytree(qwen, tmp_path / "models" / "qwen")
    first = _sweep(tmp_path, "models/qwen", "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = (tmp_path / "work" / "sweeps" / "s" / "space.yaml").read_text()
    assert str((tmp_path / "models" / "qwen").resolve()) in saved  # resolved on the driver, stored absolute
    trained = trainings(tmp_path)
    assert len(trained) == 6 and len(set(trained)) == 6  # 2 configurations x 3 folds

    again = subprocess.run([*HOOKED_AULLM, "sweep", "--resume", "--name", "s", "--workdir", str(tmp_path / "work"),
                            "--json"], cwd=tmp_path / "models", env=sweep_env(tmp_path), capture_output=True, text=True,
                           timeout=300, check=False)  # from another folder: nothing to train, nothing trained
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(trainings(tmp_path)) == 6

    config = tmp_path / "models" / "qwen" / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model_max_length": 4096}))
    changed = subprocess.run([*HOOKED_AULLM, "sweep", "--resume", "--name", "s", "--workdir", str(tmp_path / "work"),
                              "--json"], cwd=tmp_path, env=sweep_env(tmp_path), capture_output=True, text=True,
                             timeout=300, check=False)
    assert changed.returncode == 0, changed.stderr[-3000:]
    assert "changed since the sweep started" in changed.stderr
    retrained = trainings(tmp_path)[6:]
    assert len(retrained) == 6 and not {fp for fp, *_ in retrained} & {fp for fp, *_ in trained}
    summary = json.loads(changed.stdout[changed.stdout.index("{"):])
    assert summary["finished"] and summary["n_complete"] == 2


@pytest.mark.slow
def test_a_sweep_whose_every_configuration_fails_exits_non_zero_without_retrying(tmp_path):
    run = _sweep(tmp_path, "tiny", fold_fn="refusing_fold")
    _one_line_refusal(run, "every configuration failed", "refused in fold")
    attempts = trainings(tmp_path)
    assert len(attempts) == len(set(attempts))  # no fold retried (--max-failures 2 would allow it)
    assert len({fp for fp, *_ in attempts}) == 2 and len(attempts) <= 4  # failed at its first folds in flight
