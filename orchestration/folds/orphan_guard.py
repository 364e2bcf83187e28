"""A Ray worker that lost its node stops at once instead of finishing its fold beside Tune's retry.

Ray starts worker processes as children of their node's raylet. When a node is lost (its raylet
killed, the machine preempted), the worker went on training for a while (18 s in one measured
case) and stored its result, while Tune had already restarted the fold elsewhere: the fold was
trained twice and the orphan's result could be the one kept. ``exit_with_raylet`` starts a thread
that watches the parent process and ends the worker as soon as the raylet is gone.
"""

from __future__ import annotations

import logging
import os
import threading
import time

__all__ = ["exit_with_raylet"]

logger = logging.getLogger(__name__)

_watched: int | None = None


def exit_with_raylet(poll_s: float = 0.5) -> None:
    """In a Ray worker, exit the process once its raylet has gone (at once if it has already);
    elsewhere (no ``RAY_RAYLET_PID``, which Ray sets for its workers) do nothing."""
    global _watched
    raylet = int(os.environ.get("RAY_RAYLET_PID") or 0)
    if raylet <= 0 or _watched == raylet:
        return
    if os.getppid() != raylet:
        _exit(raylet)
    _watched = raylet

    def watch() -> None:
        while os.getppid() == raylet:  # a child whose parent dies is handed to another process
            time.sleep(poll_s)
        _exit(raylet)

    threading.Thread(target=watch, name="aullm-raylet-watch", daemon=True).start()


def _exit(raylet: int) -> None:
    logger.error("the raylet (pid %d) of this worker is gone: exiting, so that only Tune's retry of the fold "
                 "trains and stores it", raylet)
    os._exit(1)
