"""The HDF5 clip cache: synth -> cache -> verify -> load, reuse rules, damaged files, atomic writes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from _data_builders import casme2_dist

from aullm_core.data import (
    AU_SETS,
    get_reader,
    load_cache,
    load_frames,
    make_cache,
    verify_cache,
    write_synthetic,
)
from aullm_core.errors import CacheError, DataError


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(
        "casme2",
        tmp_path_factory.mktemp("d") / "casme2",
        subjects=3,
        clips_per_subject=2,
        seed=1,
        progress=False,
    )


@pytest.fixture(scope="module")
def cache32(synth_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_cache(
        "casme2",
        synth_root,
        tmp_path_factory.mktemp("c") / "casme2_32.h5",
        size=32,
        workers=1,
        progress=False,
    ).path


def test_round_trip(synth_root: Path, cache32: Path) -> None:
    header = verify_cache(cache32)
    assert header["dataset"] == "casme2" and header["n_clips"] == 6
    assert header["params"] == {
        "dataset": "casme2",
        "reader": "Casme2Reader",
        "size": 32,
        "color": False,
        "crop": None,
        "draft": True,
        "resample": "bilinear",
        "lenient": False,
    }
    clips = load_cache(cache32)
    table = get_reader("casme2").read(synth_root)
    assert clips.name == "casme2" and len(clips) == len(table) == 6
    assert clips.aus == AU_SETS["casme2"] and clips.labels.shape == (6, 8) and clips.labels.dtype == np.uint8
    assert header["n_frames"] == sum(a.n_frames for a in table)
    for i, a in enumerate(table):
        np.testing.assert_array_equal(clips.frames[i], load_frames(a.frames, size=32))  # the same function
        assert clips.frames[i].shape == (a.n_frames, 32, 32)
        row = clips.meta.iloc[i]
        got = tuple(row[k] for k in ("subject", "clip", "onset", "offset", "n_frames"))
        assert got == (a.subject, a.clip, a.onset, a.offset, a.n_frames)
        assert (None if pd.isna(row["apex"]) else int(row["apex"])) == a.apex
        assert row["aus"] == a.aus  # every AU of the sheet, vocabulary or not
        assert clips.labels[i].tolist() == [int(au in a.aus) for au in AU_SETS["casme2"]]
    assert (
        clips.attrs["size"] == 32 and clips.attrs["color"] is False and len(clips.attrs["fingerprint"]) == 64
    )
    assert list(clips.subjects) == [a.subject for a in table]


def test_colour_crop_and_parallel_decode(synth_root: Path, tmp_path: Path) -> None:
    crop = (20, 30, 100, 110)
    out = make_cache(
        "casme2", synth_root, tmp_path / "c.h5", size=16, color=True, crop=crop, workers=2, progress=False
    ).path
    clips = load_cache(out)
    table = get_reader("casme2").read(synth_root)
    for i in (0, 5):
        assert clips.frames[i].shape == (table[i].n_frames, 16, 16, 3)
        np.testing.assert_array_equal(
            clips.frames[i], load_frames(table[i].frames, size=16, color=True, crop=crop)
        )
    assert clips.attrs["crop"] == list(crop)


def test_reuse_force_and_changed_parameters(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "cache.h5"
    first = make_cache("casme2", synth_root, out, size=16, workers=1, progress=False)
    assert not first.reused and first.n_clips == 6
    stamp = out.stat().st_mtime_ns
    again = make_cache("casme2", synth_root, out, size=16, workers=1, progress=False)
    assert again.reused and out.stat().st_mtime_ns == stamp
    with pytest.raises(CacheError) as err:
        make_cache("casme2", synth_root, out, size=24, workers=1, progress=False)
    message = str(err.value)
    assert (
        str(out) in message and "size=16 (now 24)" in message and "--force" in message and "\n" not in message
    )
    with pytest.raises(CacheError, match="color=False"):
        make_cache("casme2", synth_root, out, size=16, color=True, workers=1, progress=False)
    forced = make_cache("casme2", synth_root, out, size=24, workers=1, progress=False, force=True)
    assert not forced.reused and load_cache(out).frames[0].shape[1:] == (24, 24)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache.h5"]  # no temporary file left


def test_changed_sources_are_noticed(tmp_path: Path) -> None:
    root = casme2_dist(
        tmp_path / "d",
        [{"subject": 1, "clip": "EP01_01", "onset": 1, "apex": "/", "offset": 4, "aus": "4+L10"}],
    )
    out = make_cache("casme2", root, tmp_path / "c.h5", size=16, workers=1, progress=False).path
    meta = load_cache(out).meta
    assert pd.isna(meta["apex"][0]) and meta["aus"][0] == (4, 10)
    frame = root / "CASME2_RAW_selected" / "sub01" / "EP01_01" / "img2.jpg"
    os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 10**9))
    with pytest.raises(CacheError, match="source files changed"):
        make_cache("casme2", root, out, size=16, workers=1, progress=False)


def test_truncated_file(cache32: Path, tmp_path: Path) -> None:
    data = cache32.read_bytes()
    for keep in (len(data) // 2, 100):
        bad = tmp_path / f"trunc{keep}.h5"
        bad.write_bytes(data[:keep])
        with pytest.raises(CacheError) as err:
            verify_cache(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)
        with pytest.raises(CacheError):
            load_cache(bad)


def test_altered_frames_and_header(cache32: Path, tmp_path: Path) -> None:
    bad = tmp_path / "altered.h5"
    shutil.copy(cache32, bad)
    with h5py.File(bad, "r") as f:
        where = f["frames"].id.get_offset() + 1234
    data = bytearray(bad.read_bytes())
    data[where] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="dataset 'frames' does not match its checksum"):
        verify_cache(bad)
    with pytest.raises(CacheError, match="altered.h5"):
        load_cache(bad)
    assert len(load_cache(bad, verify=False)) == 6  # structure is intact: only the checksum tells
    edited = tmp_path / "edited.h5"
    shutil.copy(cache32, edited)
    with h5py.File(edited, "r+") as f:
        f.attrs["n_clips"] = 5
    with pytest.raises(CacheError, match="header attributes were altered"):
        verify_cache(edited)
    relabelled = tmp_path / "relabelled.h5"
    shutil.copy(cache32, relabelled)
    with h5py.File(relabelled, "r+") as f:
        f["labels"][0, 0] = 1 - f["labels"][0, 0]
    with pytest.raises(CacheError, match="'labels'"):
        verify_cache(relabelled)
    with pytest.raises(CacheError, match="not found"):
        verify_cache(tmp_path / "absent.h5")


def test_existing_non_cache_is_refused_without_force(synth_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "notes.h5"
    out.write_text("my notes")
    with pytest.raises(CacheError, match="exists but is not a valid cache"):
        make_cache("casme2", synth_root, out, size=16, workers=1, progress=False)
    assert out.read_text() == "my notes"
    make_cache("casme2", synth_root, out, size=16, workers=1, progress=False, force=True)
    assert verify_cache(out)["n_clips"] == 6


@pytest.mark.parametrize("workers", [1, 2])
def test_bad_frame_leaves_nothing_behind(tmp_path: Path, workers: int) -> None:
    clips = [
        {"subject": 1, "clip": f"EP01_0{k}", "onset": 1, "apex": 2, "offset": 3, "aus": "4"} for k in range(3)
    ]
    root = casme2_dist(tmp_path / "d", clips)
    broken = root / "CASME2_RAW_selected" / "sub01" / "EP01_01" / "img2.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out" / "c.h5"
    with pytest.raises(DataError) as err:
        make_cache("casme2", root, out, size=16, workers=workers, progress=False)
    assert "img2.jpg" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists() and list(out.parent.iterdir()) == []


def test_samm_round_trip(tmp_path: Path) -> None:
    root = write_synthetic(
        "samm",
        tmp_path / "samm",
        subjects=2,
        clips_per_subject=1,
        seed=2,
        progress=False,
        frame_size=(120, 90),
    )
    clips = load_cache(make_cache("samm", root, tmp_path / "samm.h5", size=16, workers=1, progress=False).path)
    assert clips.aus == AU_SETS["samm"] and clips.labels.shape == (2, 4)
    assert all(s.isdigit() and len(s) == 3 for s in clips.subjects)
    assert clips.frames[0].ndim == 3 and clips.attrs["reader"] == "SammReader"


def _png_claiming(path: Path, width: int, height: int) -> Path:
    """A real 1x1 PNG whose header claims width x height pixels (CRC fixed), as a bomb would."""
    import io
    import struct
    import zlib

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    start = data.index(b"IHDR")
    data[start + 4 : start + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[start : start + 17])) & 0xFFFFFFFF
    data[start + 17 : start + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def test_a_decompression_bomb_frame_is_refused_in_one_line(tmp_path: Path) -> None:
    from aullm_core.data.preprocess import load_frames

    bomb = _png_claiming(tmp_path / "img1.png", 30000, 30000)
    with pytest.raises(DataError) as info:
        load_frames([bomb], size=16)
    message = str(info.value)
    assert str(bomb) in message and "decompression-bomb limit" in message and "\n" not in message


def test_a_killed_build_leaves_no_worker_and_its_temp_file_goes_with_the_next_build(tmp_path: Path) -> None:
    """``aullm data cache`` SIGKILLed while two decoding processes work: they end with it, and the next
    build removes the temporary file the killed one could not."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    root = write_synthetic("casme2", tmp_path / "casme2", subjects=8, clips_per_subject=4, seed=2, progress=False)
    out = tmp_path / "caches" / "casme2.h5"
    command = [sys.executable, "-c", "from orchestration.cli.main import main; main()", "data", "cache",
               "--dataset", "casme2", "--root", str(root), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    workers: list[psutil.Process] = []
    while time.time() < deadline and proc.poll() is None:
        workers = psutil.Process(proc.pid).children(recursive=True)
        if len(workers) >= 2 and list(out.parent.glob(f".{out.name}.*.tmp")):
            break
        time.sleep(0.02)
    assert len(workers) >= 2 and proc.poll() is None, "the build ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    _gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, f"orphaned decoding workers: {[p.pid for p in alive]}"
    assert list(out.parent.glob(f".{out.name}.*.tmp")), "the killed build left its temporary file"

    make_cache("casme2", root, out, workers=2, progress=False)
    verify_cache(out)
    assert not list(out.parent.glob(".*.tmp"))
