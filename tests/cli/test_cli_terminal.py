"""The command line as a person types it: help that fits the terminal, flags without values, options named
in errors, a device checked before anything runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

AULLM = [sys.executable, "-m", "orchestration.cli"]
REPO = Path(__file__).resolve().parents[2]


def _aullm(*args: str, columns: int = 80, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS=str(columns), TERM="dumb")
    return subprocess.run([*AULLM, *args], check=False, capture_output=True, text=True, env=env, cwd=cwd, timeout=120)


@pytest.mark.parametrize("columns", [60, 100])
def test_help_fits_the_terminal_and_flags_take_no_value(columns):
    for command in ("sweep", "predict", "report"):
        out = _aullm(command, "--help", columns=columns)
        assert out.returncode == 0, out.stderr
        too_wide = [line for line in out.stdout.splitlines() if len(line) > columns]
        assert not too_wide, f"aullm {command} --help is wider than {columns} columns: {too_wide[:2]}"
        assert "<bool>" not in out.stdout and "BOOLEAN" not in out.stdout
    sweep = " ".join(_aullm("sweep", "--help", columns=columns).stdout.split())
    assert "f1_pos or f1_macro" in sweep and "fold_mean" in sweep  # the objective's grammar, not cut


def test_a_flag_given_a_value_is_explained():
    out = _aullm("sweep", "--resume", "true")
    assert out.returncode == 2 and "flags and take no value" in out.stderr and "Traceback" not in out.stderr


def test_a_bad_setting_names_its_option_without_pydantic_noise(tmp_path):
    out = _aullm("sweep", "--objective", "f1:inner", "--space", "search_spaces/quick.yaml", "--cache",
                 str(tmp_path / "none.h5"), "--workdir", str(tmp_path))
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert lines[0].startswith("error: --objective: ") and "Value error" not in lines[0]
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("command", ["predict", "train", "export"])
def test_a_device_that_is_not_one_is_refused_before_anything_runs(tmp_path, command):
    args = {"predict": ["--model", str(tmp_path), "--clip", str(tmp_path)],
            "train": ["--cache", str(tmp_path / "c.h5"), "--out", str(tmp_path / "run")],
            "export": ["--sweep", "s", "--out", str(tmp_path / "model"), "--workdir", str(tmp_path)]}[command]
    out = _aullm(command, *args, "--device", "gpu")
    assert out.returncode == 2 and "expected cpu, cuda or cuda:N" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "model").exists()  # train wrote no run.json


def test_cuda_on_a_machine_without_it_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = _aullm("predict", "--model", ".", "--clip", ".", "--device", "cuda")
    assert out.returncode == 2 and "no CUDA device" in out.stderr and "Traceback" not in out.stderr
