"""MLflow writes off the sweep's critical path: one background thread sends them, in order, and retries
while the tracking server is down, so training never waits for MLflow.

Ray Tune calls the driver's callbacks inside its own loop; a write that blocks there (a tracking server
restarting, a network hiccup: MLflow's client retries for minutes) would stop every fold from being
scheduled. Here a write only enqueues; the thread retries a failed one with a growing pause (1 s to 30 s),
says once that the server does not answer and once that it is back. The tracker's writes are idempotent
(a fold or configuration already logged is found by its tags; a run left half-written is replaced), so
a retry never duplicates a run. What is still unsent when the sweep ends and the server stays down is
sent by ``aullm sweep --resume``, which logs every stored fold MLflow does not hold yet.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from aullm_core.errors import one_line

__all__ = ["TrackingQueue"]

logger = logging.getLogger(__name__)


class TrackingQueue:
    """Run tracker writes in one background thread, in order, retried until they succeed or ``drain`` gives up."""

    def __init__(self, where: str, *, max_pause: float = 30.0) -> None:
        self.where = where
        self.max_pause = max_pause
        self.unsent = 0
        self._items: queue.Queue[tuple[Callable[..., Any], tuple, dict] | None] = queue.Queue()
        self._give_up = threading.Event()
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._run, name="mlflow-writes", daemon=True)
        self._thread.start()

    def submit(self, write: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Queue ``write(*args, **kwargs)``; returns at once."""
        self._items.put((write, args, kwargs))

    def drain(self, timeout: float) -> bool:
        """Wait until every queued write is sent, at most ``timeout`` seconds; False (the rest counted as
        ``unsent`` and dropped) when the server did not come back in time."""
        deadline = time.monotonic() + timeout
        while self._items.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._items.unfinished_tasks:
            self._give_up.set()
            while self._items.unfinished_tasks:
                time.sleep(0.05)
            self._give_up.clear()
            return False
        return True

    def close(self) -> None:
        self._items.put(None)
        self._thread.join(timeout=5.0)

    def _run(self) -> None:
        while (item := self._items.get()) is not None:
            write, args, kwargs = item
            self._send(write, args, kwargs)
            self._items.task_done()
        self._items.task_done()

    def _send(self, write: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        pause = 1.0
        while True:
            try:
                write(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 (whatever the client raises while the server is away)
                if self._give_up.is_set():
                    self.unsent += 1
                    return
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    logger.warning("MLflow at %s does not answer (%s): training goes on; its records are sent when "
                                   "it is back (or by --resume)", self.where, one_line(err, limit=160))
                if self._give_up.wait(pause):
                    self.unsent += 1
                    return
                pause = min(self.max_pause, pause * 2)
                continue
            if self._down_since is not None:
                logger.warning("MLflow at %s answers again after %.0f s: the queued records are sent", self.where,
                               time.monotonic() - self._down_since)
                self._down_since = None
            return
