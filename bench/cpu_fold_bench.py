"""The CPU fold's two speed-ups, each against its baseline in the same run (the demo's quick recipe).

1. conv1 + max-pool (``aullm_core.model.encoder._Conv1MaxPoolCpu``) against the layers it replaces,
   ``F.max_pool2d(F.conv2d(x, w), 3)`` (what CUDA runs), in one process and one model: the time of a
   whole training step (quick preset, tiny LLM, LoRA r 16, faithful loss, fused Adam), both paths
   alternated, at batch 16 and 36 (the quick preset's batch; the demo's full batch of 36 clips).
2. ``MALLOC_ARENA_MAX=1`` for fold workers (``aullm_core.train.host_memory``): one quick-preset LOSO
   fold trained in a thread other than the main one, as Ray Tune runs a trial, in a fresh process
   with and without the setting: seconds, minor page faults and system time.

    .venv/bin/python bench/cpu_fold_bench.py

Writes bench/results/cpu_fold_bench.json. Run it with nothing else on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

from _synth_data import synthetic_dataset

from aullm_core.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results" / "cpu_fold_bench.json"
DATA = ("casme2", 8, 6, 0, "easy")  # the demo's dataset: 48 clips of 8 subjects


def _cache() -> Path:
    import tempfile

    from aullm_core.data.cache import make_cache

    style, subjects, clips, seed, difficulty = DATA
    root = synthetic_dataset(style, subjects, clips, seed, difficulty=difficulty)
    return make_cache(style, root, Path(tempfile.gettempdir()) / "aullm-bench" / f"{root.name}.h5", progress=False).path


def step_times(batch: int, repeats: int, steps: int) -> dict[str, list[float]]:
    """Seconds per training step, the new and the replaced conv1 path alternated on one model."""
    import torch
    import torch.nn.functional as F

    from aullm_core.config import ExperimentConfig
    from aullm_core.data.cache import load_cache
    from aullm_core.model import encoder
    from aullm_core.train.engine_torch import TorchEngine
    from aullm_core.train.fold import build_model, seed_everything
    from aullm_core.train.host_memory import retain_freed_memory
    from aullm_core.train.losses import get_loss
    from aullm_core.train.sampling import DeviceClips

    torch.set_num_threads(os.cpu_count() or 1)
    retain_freed_memory()
    clips = load_cache(_cache(), verify=False)
    config = ExperimentConfig.preset("quick").with_overrides({"train.batch_size": batch, "model.lora.r": 16})
    labels = torch.as_tensor(clips.label_matrix(clips.aus)[:batch], dtype=torch.float32)
    device = torch.device("cpu")
    seed_everything(0)
    engine = TorchEngine(build_model(config, labels.shape[1], device), config.train, device)
    x = DeviceClips(clips.frames[:batch], device).train_batch(
        torch.arange(batch), config.data.n_frames, config.data.min_train_end, torch.Generator().manual_seed(0))
    loss = get_loss(config.train.loss)
    ours = encoder.VisualEncoder._conv1_pooled

    def replaced(self: encoder.VisualEncoder, frames: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self._conv1(frames), self.pool1.kernel_size[1])

    times: dict[str, list[float]] = {"conv2d_max_pool2d": [], "conv1_max_pool_cpu": []}
    engine.train()
    try:
        for _ in range(repeats):
            for name, path in (("conv2d_max_pool2d", replaced), ("conv1_max_pool_cpu", ours)):
                encoder.VisualEncoder._conv1_pooled = path
                for _ in range(2):
                    engine.train_step(x, labels, loss)
                start = time.perf_counter()
                for _ in range(steps):
                    engine.train_step(x, labels, loss)
                times[name].append((time.perf_counter() - start) / steps)
    finally:
        encoder.VisualEncoder._conv1_pooled = ours
    return times


def thread_fold() -> dict[str, float]:
    """One quick fold (batch 16, LoRA r 16) in a non-main thread of this process: seconds, faults, system time."""
    import torch

    from aullm_core.config import ExperimentConfig
    from aullm_core.data.cache import load_cache
    from aullm_core.data.splits import loso_folds
    from aullm_core.train.fold import train_fold

    clips = load_cache(_cache(), verify=False)
    fold = loso_folds(clips)[0]
    config = ExperimentConfig.preset("quick").with_overrides({"model.lora.r": 16})
    out: dict[str, float] = {}

    def run() -> None:
        torch.set_num_threads(os.cpu_count() or 1)
        train_fold(clips, clips, fold, config, progress=False)  # the first fold also maps the heap once
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        train_fold(clips, clips, fold, config, progress=False)
        after = resource.getrusage(resource.RUSAGE_SELF)
        out.update(seconds=time.perf_counter() - start, minor_faults=after.ru_minflt - before.ru_minflt,
                   system_s=after.ru_stime - before.ru_stime)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    return out


def _thread_fold_in_fresh_process(arena_max: str | None) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    if arena_max is not None:
        env["MALLOC_ARENA_MAX"] = arena_max
    done = subprocess.run([sys.executable, __file__, "--thread-fold"], env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="Alternations of the two conv1 paths.")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per alternation.")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--thread-fold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.thread_fold:
        print(json.dumps(thread_fold()))
        return
    result: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "data": "casme2 style, easy, 8 subjects x 6 clips (the demo's); quick preset, tiny LLM, LoRA r 16",
        "step_s": {},
    }
    for batch in (16, 36):
        times = step_times(batch, args.repeats, args.steps)
        best = {name: min(values) for name, values in times.items()}
        result["step_s"][f"batch_{batch}"] = {  # type: ignore[index]
            "all": {k: [round(v, 4) for v in vs] for k, vs in times.items()},
            "best": {k: round(v, 4) for k, v in best.items()},
            "speedup": round(best["conv2d_max_pool2d"] / best["conv1_max_pool_cpu"], 3),
        }
        print(f"batch {batch}: step {best['conv2d_max_pool2d']:.3f} s -> {best['conv1_max_pool_cpu']:.3f} s "
              f"({best['conv2d_max_pool2d'] / best['conv1_max_pool_cpu']:.2f}x)")
    default, one_arena = _thread_fold_in_fresh_process(None), _thread_fold_in_fresh_process("1")
    result["fold_in_a_thread"] = {
        "default_allocator": {k: round(v, 3) for k, v in default.items()},
        "MALLOC_ARENA_MAX=1": {k: round(v, 3) for k, v in one_arena.items()},
        "speedup": round(default["seconds"] / one_arena["seconds"], 3),
    }
    print(f"fold in a thread: {default['seconds']:.2f} s ({default['minor_faults']:.0f} faults, "
          f"{default['system_s']:.2f} s system) -> {one_arena['seconds']:.2f} s with MALLOC_ARENA_MAX=1 "
          f"({one_arena['minor_faults']:.0f} faults, {one_arena['system_s']:.2f} s system)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
