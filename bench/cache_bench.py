"""Loading a dataset for training: every clip from its JPEG folders vs the HDF5 cache.

Baseline: decode + grey + resize every frame of every clip with ``load_frames`` (the function
the cache itself uses), in one process. Cache: ``load_cache`` (one read of the whole file into
memory, checksums verified; also timed without verification). Both run warm (the files were just
read or written, so they sit in the page cache): the difference measured is decoding work, not
disk speed. The synthetic dataset has a realistic size (CASME II style: 26 subjects x 10 clips of
200 fps length, 30-110 frames each) and is kept in a scratch folder between runs.

    .venv/bin/python bench/cache_bench.py                    # casme2 style, 64x64 grey
    .venv/bin/python bench/cache_bench.py --style samm       # samm style (400x300 grey frames)

Prints a summary and writes bench/results/cache_bench.json (one entry per style, merged).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from _synth_data import DATA_DIR, synthetic_dataset

from aullm_core.atomic import atomic_write_text
from aullm_core.data import get_reader, load_cache, load_frames, make_cache

RESULTS = Path(__file__).parent / "results" / "cache_bench.json"
DEFAULT_SIZES = {"casme2": (26, 10), "samm": (32, 5)}


def time_jpeg(style: str, root: Path, size: int) -> tuple[float, int, int]:
    """Seconds to decode every clip from its folder; clips and frames loaded."""
    table = get_reader(style).read(root)
    start = time.perf_counter()
    frames = sum(len(load_frames(a.frames, size=size, color=False)) for a in table)
    return time.perf_counter() - start, len(table), frames


def time_cache(path: Path, repeats: int, verify: bool) -> float:
    """Median seconds of ``load_cache`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        clips = load_cache(path, verify=verify)
        times.append(time.perf_counter() - start)
        del clips
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--style", choices=["casme2", "samm"], default="casme2")
    parser.add_argument("--subjects", type=int, help="default: 26 (casme2) / 32 (samm)")
    parser.add_argument("--clips-per-subject", type=int, help="default: 10 (casme2) / 5 (samm)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="load_cache runs (median reported)")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="synthetic data and cache (reused)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    subjects = args.subjects or DEFAULT_SIZES[args.style][0]
    clips_per_subject = args.clips_per_subject or DEFAULT_SIZES[args.style][1]

    root = synthetic_dataset(args.style, subjects, clips_per_subject, args.seed, args.data_dir)
    cache = args.data_dir / f"{root.name}-{args.size}.h5"
    built = make_cache(args.style, root, cache, size=args.size, progress=True)
    jpeg_s, n_clips, n_frames = time_jpeg(args.style, root, args.size)
    cache_s = time_cache(cache, args.repeats, verify=True)
    cache_noverify_s = time_cache(cache, args.repeats, verify=False)
    result = {
        "style": args.style,
        "subjects": subjects,
        "clips": n_clips,
        "frames": n_frames,
        "size": args.size,
        "color": False,
        "jpeg_folders_s": round(jpeg_s, 3),
        "load_cache_s": round(cache_s, 4),
        "load_cache_no_verify_s": round(cache_noverify_s, 4),
        "ratio": round(jpeg_s / cache_s, 1),
        "ratio_no_verify": round(jpeg_s / cache_noverify_s, 1),
        "cache_mb": round(cache.stat().st_size / 2**20, 1),
        "cache_build_s": None if built.reused else round(built.seconds, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        "notes": "single process; warm page cache; load_cache verifies SHA-256 checksums unless noted",
    }
    print(
        f"{args.style}: {n_clips} clips, {n_frames} frames -> {args.size}x{args.size} grey\n"
        f"  JPEG folders (decode + grey + resize): {jpeg_s:8.2f} s\n"
        f"  load_cache (checksums verified):       {cache_s:8.3f} s   ratio {jpeg_s / cache_s:6.1f}x\n"
        f"  load_cache (verify=False):             {cache_noverify_s:8.3f} s   "
        f"ratio {jpeg_s / cache_noverify_s:6.1f}x\n"
        f"  cache file: {result['cache_mb']} MB"
    )
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results[args.style] = result
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
