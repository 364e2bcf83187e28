"""Stopping a sweep cleanly on SIGTERM or SIGUSR1 (Slurm's ``scancel``, a time-limit warning, a preemption).

Ray Tune already stops gracefully on SIGUSR1 (and on a first Ctrl-C): it ends its loop, writes the
experiment state and returns from ``Tuner.fit``; folds finished so far are in the fold store. But
``ray.init`` sets SIGTERM to ``sys.exit`` in the driver, which tears the driver down in the middle
of Tune's loop, and a SIGUSR1 outside ``fit`` would kill the process (its default action).
``GracefulStop`` takes both signals for the time of a sweep: it records that a stop was asked,
hands the signal to Tune's handler while a ``fit`` is running, and lets the sweep skip the phases
not started yet, close its MLflow runs and write its summary. The sweep then resumes with
``--resume`` (the batch script in ``orchestration/templates/slurm_sweep.sbatch`` does it by itself).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, Self

__all__ = ["GracefulStop"]

logger = logging.getLogger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class GracefulStop:
    """While open, SIGTERM and SIGUSR1 stop the sweep: finished folds are kept, folds in flight are abandoned."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.reason: str | None = None  # why the sweep stopped itself (request), rather than a signal
        self._previous: dict[int, Any] = {}
        self._tune_stop: Callable[[int, FrameType | None], Any] | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            for sig in _SIGNALS:
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def follow_tune(self) -> None:
        """Called once a ``Tuner.fit`` has set its SIGUSR1 handler: put ours back in front of it."""
        handler = signal.getsignal(signal.SIGUSR1)
        if self._previous and callable(handler) and handler != self._on_signal:
            self._tune_stop = handler
            signal.signal(signal.SIGUSR1, self._on_signal)

    def rearm(self) -> None:
        """Take both signals back: after ``ray.init`` (which sets SIGTERM to ``sys.exit``) and after a
        ``Tuner.fit`` (no Tune loop to stop any more; Tune leaves its SIGUSR1 handler set)."""
        self._tune_stop = None
        if self._previous:
            for sig in _SIGNALS:
                signal.signal(sig, self._on_signal)

    def request(self, reason: str) -> None:
        """Stop the sweep from inside (the driver found it cannot go on): as a SIGUSR1 would, with ``reason``."""
        if self.requested:
            return
        self.reason = reason
        logger.warning("stopping the sweep: %s", reason)
        os.kill(os.getpid(), signal.SIGUSR1)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if not self.requested and self.reason is None:
            logger.warning("%s received: stopping the sweep once its state is saved (continue with --resume)",
                           signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name
        if self._tune_stop is not None:  # a Tuner.fit is running: Tune's own stop ends its loop
            self._tune_stop(signal.SIGUSR1, frame)
