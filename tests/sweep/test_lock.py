"""orchestration.sweep.lock: one driver per sweep, a refused driver told who holds the lock."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aullm_core.errors import ConfigError
from orchestration.sweep.lock import SweepLock

#: A process that takes the lock, waits, then writes who it is: the moment between taking the lock and
#: writing it that a second driver may meet.
_SLOW_HOLDER = textwrap.dedent("""
    import fcntl, json, os, socket, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    data = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": "now"}).encode()
    os.pwrite(fd, data, 0)
    os.ftruncate(fd, len(data))
    sys.stdin.read()
""")


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(done.stdout)


def test_a_second_driver_is_refused_naming_the_holder(tmp_path: Path) -> None:
    with SweepLock(tmp_path):
        holder = json.loads((tmp_path / "driver.lock").read_text())
        assert holder["pid"] > 0 and holder["host"] == socket.gethostname()
    child = subprocess.Popen([sys.executable, "-c", _SLOW_HOLDER, str(tmp_path / "driver.lock"), "0"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"being run by pid {child.pid} on "), SweepLock(tmp_path):
            pass
    finally:
        child.communicate("")
    with SweepLock(tmp_path):  # released when its holder ended
        pass


@pytest.mark.parametrize("left_behind", ["dead driver", "empty"])
def test_a_driver_refused_before_the_holder_wrote_its_name_waits_for_it(tmp_path: Path, left_behind: str) -> None:
    """The file still names a killed driver (or nothing) when the new holder has the lock but has not
    written yet: the refused driver names the live holder, not the dead one."""
    lock = tmp_path / "driver.lock"
    stale = {"host": socket.gethostname(), "pid": _dead_pid(), "since": "earlier"}
    lock.write_text(json.dumps(stale) if left_behind == "dead driver" else "")
    child = subprocess.Popen([sys.executable, "-c", _SLOW_HOLDER, str(lock), "0.5"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=f"being run by pid {child.pid} on ") as refused, SweepLock(tmp_path):
            pass
        assert f"pid {stale['pid']} " not in str(refused.value)
    finally:
        child.communicate("")
