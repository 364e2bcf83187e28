"""GracefulStop with real signals sent to this process: what it records and whom it hands the stop to."""

from __future__ import annotations

import os
import signal

from orchestration.sweep.stop import GracefulStop


def _send(signum: int) -> None:
    os.kill(os.getpid(), signum)  # delivered before os.kill returns (main thread, no signal blocked)


def test_outside_a_fit_both_signals_are_recorded_instead_of_ending_the_process():
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        _send(signal.SIGUSR1)  # its default action would terminate the test process
        assert stop.signal_name == "SIGUSR1"
        _send(signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_during_a_fit_the_signal_also_reaches_tunes_own_stop():
    calls: list[int] = []
    with GracefulStop() as stop:
        signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))  # what Tuner.fit installs
        stop.follow_tune()
        _send(signal.SIGUSR1)
        assert calls == [signal.SIGUSR1] and stop.signal_name == "SIGUSR1"
        _send(signal.SIGTERM)  # Tune does not stop on SIGTERM by itself: it is handed on as SIGUSR1
        assert calls == [signal.SIGUSR1, signal.SIGUSR1] and stop.signal_name == "SIGTERM"
        stop.rearm()  # the fit has ended: its handler is not called any more
        _send(signal.SIGUSR1)
        assert len(calls) == 2


def test_without_a_signal_nothing_is_requested():
    with GracefulStop() as stop:
        stop.rearm()
    assert not stop.requested and stop.signal_name is None
