"""Synthetic datasets for the benches, kept between runs in a scratch folder."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from aullm_core.data.synth import MANIFEST, write_synthetic

DATA_DIR = Path(tempfile.gettempdir()) / "aullm-bench"


def synthetic_dataset(
    style: str,
    subjects: int,
    clips: int,
    seed: int,
    data_dir: Path = DATA_DIR,
    amplitude: float | None = None,
    difficulty: str = "realistic",
) -> Path:
    """A synthetic dataset under ``data_dir``: reused when present and written by the same code and
    settings, else (re)written. Only folders holding a synthetic manifest are ever removed.

    Prints how long writing took (or that the folder was reused)."""
    tag = ("" if amplitude is None else f"-amp{amplitude:g}") + ("" if difficulty == "realistic" else f"-{difficulty}")
    root = data_dir / f"{style}-{subjects}x{clips}-seed{seed}{tag}"
    kwargs = {
        "subjects": subjects,
        "clips_per_subject": clips,
        "seed": seed,
        "workers": None,
        "amplitude": amplitude,
        "difficulty": difficulty,
    }
    existed = (root / MANIFEST).is_file()
    start = time.perf_counter()
    try:
        write_synthetic(style, root, **kwargs)
    except ValueError:
        if not existed:
            raise
        json.loads((root / MANIFEST).read_text())  # ours: stale (other code or settings), rewrite it
        shutil.rmtree(root)
        existed = False
        write_synthetic(style, root, **kwargs)
    seconds = time.perf_counter() - start
    if existed and seconds < 5:
        print(f"reused synthetic dataset {root}")
    else:
        print(f"wrote synthetic dataset {root} in {seconds:.1f} s")
    return root
