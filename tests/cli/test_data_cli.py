"""`aullm data ...` through the real typer app: outputs, summaries, and one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _data_builders import CASME2_HEADER, casme2_dist, samm_dist
from typer.testing import CliRunner

from orchestration.cli.main import app

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def _error_line(result, *names: str) -> str:
    """The command failed with exit 2 and exactly one 'error:' line naming each of ``names``."""
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr  # before it, at most a progress bar
    assert "Traceback" not in result.output
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "casme2"
    result = _run(
        "data",
        "synth",
        "--style",
        "casme2",
        "--subjects",
        2,
        "--clips-per-subject",
        2,
        "--out",
        out,
        "--seed",
        4,
        "--workers",
        1,
    )
    assert result.exit_code == 0, result.output
    assert "4 casme2-style clips, 2 subjects, difficulty realistic" in result.stdout
    return out


def test_inspect_json_and_summary(synth_root: Path) -> None:
    result = _run("data", "inspect", "--dataset", "casme2", "--root", synth_root, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)  # stdout is JSON only
    assert len(rows) == 4
    assert all(
        list(r) == ["subject", "clip", "onset", "apex", "offset", "aus", "emotion", "n_frames"] for r in rows
    )
    assert rows[0]["subject"] == "sub01" and rows[0]["n_frames"] == rows[0]["offset"] - rows[0]["onset"] + 1
    assert "4 clips, 2 subjects" in result.stderr and "positives per AU" in result.stderr


def test_inspect_table(synth_root: Path) -> None:
    result = _run("data", "inspect", "--dataset", "casme2", "--root", synth_root)
    assert result.exit_code == 0, result.output
    first = json.loads(
        _run("data", "inspect", "--dataset", "casme2", "--root", synth_root, "--format", "json").stdout
    )[0]
    assert first["clip"] in result.stdout and "n_frames" in result.stdout
    assert "4 clips, 2 subjects" in result.stdout


def test_inspect_lenient_lists_skipped_clips(tmp_path: Path) -> None:
    clips = [
        {"subject": 6, "clip": "006_1_1", "onset": 1, "apex": 2, "offset": 3, "aus": "R12 + R15"},
        {"subject": "007", "clip": "007_1_1", "onset": 1, "apex": 2, "offset": 3, "aus": "12 or 14"},
    ]
    root = samm_dist(tmp_path, clips)
    _error_line(_run("data", "inspect", "--dataset", "samm", "--root", root), "007_1_1", "'12 or 14'")
    result = _run("data", "inspect", "--dataset", "samm", "--root", root, "--lenient", "--format", "json")
    assert result.exit_code == 0 and [r["clip"] for r in json.loads(result.stdout)] == ["006_1_1"]
    assert "skipped clip 007/007_1_1" in result.stderr and "1 clips skipped" in result.stderr
    overrides = tmp_path / "fix.yaml"
    overrides.write_text("007_1_1: '14'\n")
    result = _run(
        "data", "inspect", "--dataset", "samm", "--root", root, "--overrides", overrides, "--format", "json"
    )
    assert result.exit_code == 0 and json.loads(result.stdout)[1]["aus"] == [14]


def test_cache_verify_reuse(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "c.h5"
    args = (
        "data",
        "cache",
        "--dataset",
        "casme2",
        "--root",
        synth_root,
        "--out",
        out,
        "--size",
        16,
        "--workers",
        1,
    )
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"wrote {out}: 4 clips")
    again = _run(*args)
    assert again.exit_code == 0 and again.stdout.startswith(f"reused existing cache {out}")
    ok = _run("data", "verify", out)
    assert ok.exit_code == 0 and ok.stdout.startswith(f"ok {out}: casme2, 4 clips")
    _error_line(_run(*args[:-4], "--size", 32), str(out), "size=16 (now 32)", "--force")
    forced = _run(*args[:-4], "--size", 32, "--force", "--color", "--crop", "0,0,100,120")
    assert forced.exit_code == 0 and "32x32 colour, crop 0,0,100,120" in forced.stdout
    truncated = tmp_path / "t.h5"
    truncated.write_bytes(out.read_bytes()[:5000])
    _error_line(_run("data", "verify", truncated), str(truncated), "truncated")
    _error_line(_run(*args[:-4], "--out", truncated), str(truncated), "not a valid cache")


def test_errors_are_one_line(tmp_path: Path) -> None:
    _error_line(
        _run("data", "inspect", "--dataset", "casme3", "--root", tmp_path), "unknown dataset 'casme3'"
    )
    _error_line(
        _run("data", "inspect", "--dataset", "casme2", "--root", tmp_path / "nowhere"),
        str(tmp_path / "nowhere"),
    )
    _error_line(
        _run("data", "inspect", "--dataset", "samm", "--root", tmp_path), "SAMM_Micro_FACS_Codes_v2.xlsx"
    )
    clip = {"subject": 1, "clip": "EP01_01", "onset": 5, "apex": 6, "offset": 8, "aus": "4+L10"}
    root = casme2_dist(tmp_path / "c", [clip])
    frames = root / "CASME2_RAW_selected"
    frames.rename(root / "elsewhere")
    _error_line(
        _run("data", "cache", "--dataset", "casme2", "--root", root, "--out", tmp_path / "x.h5"), str(frames)
    )
    (root / "elsewhere").rename(frames)
    clip_folder = frames / "sub01" / "EP01_01"
    (clip_folder / "img8.jpg").unlink()
    _error_line(
        _run("data", "inspect", "--dataset", "casme2", "--root", root),
        str(clip_folder),
        "3 frames, expected 4",
    )
    (clip_folder / "img8.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    out = tmp_path / "x.h5"
    _error_line(
        _run("data", "cache", "--dataset", "casme2", "--root", root, "--out", out, "--workers", 1), "img8.jpg"
    )
    assert not out.exists()
    header = list(CASME2_HEADER)
    header[7] = "AUs"
    bad = casme2_dist(tmp_path / "h", [clip], header=header)
    _error_line(
        _run("data", "inspect", "--dataset", "casme2", "--root", bad),
        "CASME2-coding-20140508.xlsx",
        "column H",
    )
    _error_line(
        _run("data", "cache", "--dataset", "casme2", "--root", bad, "--out", out, "--crop", "1,2"), "--crop"
    )


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["--debug", "data", "inspect", "--dataset", "casme2", "--root", str(tmp_path / "none")]
    )
    assert (
        result.exit_code != 0
        and result.exception is not None
        and not isinstance(result.exception, SystemExit)
    )
