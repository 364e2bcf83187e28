"""Keep freed host memory in the process instead of returning it to the kernel after every step.

A CPU training step allocates and frees tensors of tens to hundreds of MB (the projector's 228 MB
weight gradient, the first convolution's output and its gradient). glibc serves allocations that
large with a fresh ``mmap`` and returns them with ``munmap`` when freed, so every step pays the
kernel for zeroing and mapping the same pages again: on this project's 2-core machine a third of
a fold's time was system time. Telling glibc to serve them from its heap and never trim it makes
later steps reuse the pages (a CPU training step of the quick preset took about 1.4x less time).
The cost is that a process keeps its peak heap until it exits, which suits fold workers.

That setting covers glibc's main arena only. A thread other than the main one allocates from an
arena of its own, whose freed heaps glibc gives back to the kernel whatever the trim threshold, and
Ray Tune runs a trial's function in such a thread: a quick-preset fold in a non-main thread took
7.95 s with 1.5 million page faults and 3.5 s of system time, and 5.57 s with the setting below
(bench/cpu_fold_bench.py, bench/results/cpu_fold_bench.json).
``FOLD_WORKER_ENV`` (``MALLOC_ARENA_MAX=1``: every thread allocates from the main arena) must be in
a fold worker's environment when it starts, since a thread's arena is chosen at its first
allocation; the sweep gives it to every Ray worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

__all__ = ["FOLD_WORKER_ENV", "fold_worker_env", "retain_freed_memory"]

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_TOP_PAD_BYTES = 64 * 2**20
_TRIM_THRESHOLD_BYTES = 2**31 - 1
_done = False

FOLD_WORKER_ENV = {"MALLOC_ARENA_MAX": "1"}


def fold_worker_env() -> dict[str, str]:
    """Environment variables for a process that trains folds: ``FOLD_WORKER_ENV``, where not set already."""
    return {key: os.environ.get(key, value) for key, value in FOLD_WORKER_ENV.items()}


def retain_freed_memory() -> bool:
    """Switch glibc's allocator to heap-only, untrimmed allocation (once per process).

    Returns True when the setting is in force (Linux with glibc), False elsewhere (a no-op).
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_MAX, 0),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES),
            (_M_TOP_PAD, _TOP_PAD_BYTES),
        )
    )
    if not ok:
        log.debug("mallopt refused a setting; host allocations keep their defaults")
    _done = ok
    return ok
