"""bench/gpu_check.sh in its reduced (CPU) mode: the script itself, end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.heavy
def test_gpu_check_reduced_mode_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "gpu_bench.json"
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--reduced", "--out", str(out)],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["mode"] == "reduced"
    assert result["gpu_tests_exit"] in (0, 5)
    row = result["sizes"]["tiny_b8"]
    assert row["step_s"] > 0 and row["clips_per_s"] == pytest.approx(8 / row["step_s"])
    assert row["max_abs_logit_diff"] < 1e-4  # shared prompt KV and naive paths agree
    assert set(row["modes"]) == {"naive", "shared_dense", "shared"}
    assert row["llm_part"]["mode"] == "shared" and 0 < row["llm_part"]["s"] < row["step_s"]
    assert row["profile"]["ms_per_step"] > 0 and row["profile"]["by_category_ms"]
    assert result["zero3_fold"]["ok"] and result["zero3_fold"]["prediction_files"] >= 1


def test_gpu_check_rejects_unknown_option() -> None:
    proc = subprocess.run(
        ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--bogus"], check=False, cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "unknown option --bogus" in proc.stderr
