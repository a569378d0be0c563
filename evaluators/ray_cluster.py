"""A private local Ray cluster that listens on loopback only.

Ray binds its GCS, raylet and workers to the machine's outward address by
default, even with ``_node_ip_address="127.0.0.1"`` (shared/NOTES.md). The
switch that keeps everything on 127.0.0.1 is ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
but Ray reads it once, when ``ray`` is first imported: setting it later only
reaches the processes Ray spawns, while the driver has already picked the
outward address and hands it to them. So both are set here, just before
``ray.init``. (A real multi-node cluster is joined with ``address=`` instead.)
"""

from __future__ import annotations

import os


def start_private_cluster(num_cpus: int | None = None, resources: dict | None = None, **kwargs) -> None:
    """``ray.init`` a fresh single-node cluster on 127.0.0.1, no dashboard, quiet.

    The loopback switch is on only while Ray starts its processes, then put
    back, so that a later ``ray start --address`` or ``ray.init(address=...)``
    from this process (or its children) can still form a real cluster.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray._private import ray_constants

    saved_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    saved_const = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"  # inherited by the processes started now
    ray_constants.ENABLE_RAY_CLUSTER = False  # what the driver read at import time
    try:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False,
                 resources=resources or {}, logging_level="error", log_to_driver=False, **kwargs)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_const
        if saved_env is None:
            os.environ.pop(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def listening_addresses(pids: set[int]) -> list[str]:
    """``host:port`` of every TCP socket in LISTEN state owned by one of ``pids`` (from ``ss -ltnp``)."""
    import re
    import subprocess

    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(p) for p in re.findall(r"pid=(\d+)", line)}
        if owners & pids:
            found.append(line.split()[3])
    return found
