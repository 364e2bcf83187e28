"""The local Ray cluster a sweep starts listens on 127.0.0.1 only (checked on the real sockets), and its
workers start with the allocator setting fold threads need (aullm_core.train.host_memory)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, os, time
    import psutil
    import ray
    from orchestration.sweep.ray_cluster import start_ray
    from orchestration.sweep.settings import SweepSettings

    start_ray(SweepSettings(space="s.yaml", cache="c.h5", num_cpus=1))
    time.sleep(2)
    ours = {p.pid for p in psutil.Process().children(recursive=True)} | {psutil.Process().pid}
    found = sorted({(c.laddr.ip, psutil.Process(c.pid).name()) for c in psutil.net_connections("inet")
                    if c.status == psutil.CONN_LISTEN and c.pid in ours})
    arena = ray.get(ray.remote(lambda: os.environ.get("MALLOC_ARENA_MAX")).remote())
    ray.shutdown()
    print(json.dumps({"listening": found, "worker_arena_max": arena}))
""")


def test_a_local_sweep_cluster_listens_on_loopback_only() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    listening = seen["listening"]
    names = {name for _, name in listening}
    assert {"gcs_server", "raylet"} <= names, listening
    exposed = [(ip, name) for ip, name in listening if ip not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert exposed == [], f"listening beyond loopback: {exposed}"
    assert seen["worker_arena_max"] == "1", "Ray workers must allocate from one glibc arena (host_memory.py)"
