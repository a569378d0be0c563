"""A real multi-node Ray cluster on loopback for tests, whose worker nodes can be killed for real.

Everything runs inside a network namespace that has only loopback and a
private PID namespace (``unshare -n -p``), so traffic stays on 127.0.0.1 and
``ray stop --force`` there can only stop this test's processes. The head runs
in that namespace; each worker node runs in a PID namespace of its own, so
killing that namespace's first process (SIGKILL) takes the node's raylet,
object store and workers down at once, as a crashed machine would. Every
process carries the same auth token (Ray 2.60 token authentication). The
head checks node health every 0.5 s so a dead node is noticed in ~2 s.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

UNSHARE = ["unshare", "--net", "--pid", "--fork", "--mount-proc"]
RAY = Path(sys.executable).with_name("ray")


def namespaces_work() -> str | None:
    """None if network + PID namespaces can be made here, else why not (the reason to skip)."""
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "unshare/ip not installed"
    r = subprocess.run([*UNSHARE, "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    return None if r.returncode == 0 else f"network namespaces not permitted here ({r.stderr.strip()[:120]})"


def node_options(node: dict) -> str:
    res = f" --resources='{json.dumps(node['resources'])}'" if node.get("resources") else ""
    return f"--num-cpus={node.get('cpus', 1)} --object-store-memory=150000000 --disable-usage-stats{res}"


def cluster_script(command: str, head: dict, workers: list[dict], temp: Path, port: int = 6390) -> str:
    """Bash: start the head and ``workers`` (each ``{"cpus": N, "resources": {...}}``), wait until all
    joined, run ``command``, stop Ray, exit with the command's status (90-93: the cluster did not start).

    ``command`` may use ``$ADDRESS`` (the head), ``start_worker NAME 'OPTIONS'`` (one more worker
    node; OPTIONS as for ``ray start``) and ``wait_nodes N`` (until N nodes are alive). Node logs go
    to ray_head.log / ray_NAME.log in the working directory.
    """
    workers_started = "\n".join(f"start_worker worker{i} {shlex.quote(node_options(w))}"
                                 for i, w in enumerate(workers))
    return textwrap.dedent(f"""
        set -u
        ip link set lo up
        export RAY_AUTH_MODE=token RAY_AUTH_TOKEN={secrets.token_hex(32)} RAY_USAGE_STATS_ENABLED=0
        export ADDRESS=127.0.0.1:{port}
        start_worker() {{  # a node in a PID namespace of its own: killing its first process kills the node
            eval "unshare --pid --fork --mount-proc {RAY} start --address=$ADDRESS --block $2" >ray_$1.log 2>&1 &
            for _ in $(seq 600); do  # one at a time: nodes starting together can pick the same socket names
                grep -q "Ray runtime started" ray_$1.log && return
                kill -0 $! 2>/dev/null || exit 92
                sleep 0.1
            done
            exit 93
        }}
        wait_nodes() {{
            {sys.executable} -c "
        import sys, time, ray
        ray.init(address='$ADDRESS', logging_level='error')
        t = time.time()
        while sum(n['Alive'] for n in ray.nodes()) != $1:
            assert time.time() - t < 90, 'nodes did not join'
            time.sleep(0.2)
        " >>ray_join.log 2>&1 || exit 91
        }}
        RAY_health_check_period_ms=500 RAY_health_check_failure_threshold=3 \\
            {RAY} start --head --port={port} --include-dashboard=false --temp-dir={temp} \\
            {node_options(head)} >ray_head.log 2>&1 || exit 90
    """) + workers_started + textwrap.dedent(f"""
        wait_nodes {1 + len(workers)}
        {command}
        rc=$?
        {RAY} stop --force >/dev/null 2>&1
        exit $rc
    """)


class LoopbackCluster:
    """A head plus worker nodes running ``command``; started with :meth:`start`, finished with :meth:`wait`."""

    def __init__(self, cwd: Path, command: str, head: dict, workers: list[dict]):
        self.cwd = Path(cwd)
        self.temp = Path(f"/tmp/rsn_{secrets.token_hex(4)}")  # short: Ray's socket paths are length-limited
        self.script = cluster_script(command, head, workers, self.temp)
        self.proc: subprocess.Popen | None = None

    def start(self) -> "LoopbackCluster":
        self.proc = subprocess.Popen([*UNSHARE, "bash", "-c", self.script], cwd=self.cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        return self

    def wait(self, timeout: float = 280) -> tuple[int, str]:
        """The command's exit status and the script's output; the whole namespace is gone afterwards."""
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        finally:
            self.close()
        return self.proc.returncode, out

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # unshare and the namespace's first process
            self.proc.wait(timeout=30)
        shutil.rmtree(self.temp, ignore_errors=True)

    def run(self, timeout: float = 280) -> tuple[int, str]:
        return self.start().wait(timeout)

    def log(self, name: str, tail: int = 2000) -> str:
        p = self.cwd / name
        return p.read_text()[-tail:] if p.exists() else ""

    # ---- killing a worker node ----------------------------------------------------------
    def _processes(self) -> dict[int, dict]:
        """This cluster's processes: pid -> {ppid, cmdline, nspid (pids per namespace level), pidns}."""
        procs = {}
        for d in Path("/proc").glob("[0-9]*"):
            try:
                status = dict(line.split(":\t", 1) for line in (d / "status").read_text().splitlines()
                              if ":\t" in line)
                procs[int(d.name)] = {"ppid": int(status["PPid"]), "nspid": status["NSpid"].split(),
                                      "cmdline": (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(),
                                      "pidns": os.readlink(d / "ns" / "pid")}
            except (OSError, KeyError, ValueError):
                continue
        mine, todo = {}, [self.proc.pid]
        while todo:
            p = todo.pop()
            for c, info in procs.items():
                if info["ppid"] == p and c not in mine:
                    mine[c] = info
                    todo.append(c)
        return mine

    def node_running(self, *titles: str, exclude: tuple[str, ...] = ()) -> str | None:
        """The PID namespace of a worker node (not in ``exclude``) where a process starting with each of
        ``titles`` runs (e.g. ``ray::LatencyActor``, ``ray::ImplicitFunc.train`` = a trial running), or None."""
        procs = self._processes()
        found = {}
        for info in procs.values():
            # root / cluster / worker node (the head is one level up)
            if len(info["nspid"]) == 3 and info["pidns"] not in exclude:
                for t in titles:
                    if info["cmdline"].startswith(t):
                        found.setdefault(info["pidns"], set()).add(t)
        return next((ns for ns, ts in found.items() if len(ts) == len(titles)), None)

    def wait_node_running(self, *titles: str, exclude: tuple[str, ...] = (), timeout: float = 120) -> str:
        t0 = time.time()
        while time.time() - t0 < timeout:
            assert self.proc.poll() is None, f"the cluster's command finished before {titles} ran on a worker"
            ns = self.node_running(*titles, exclude=exclude)
            if ns:
                return ns
            time.sleep(0.1)
        raise AssertionError(f"{titles} did not run on one worker node within {timeout} s")

    def kill_node(self, pidns: str) -> None:
        """SIGKILL the first process of the worker node's PID namespace: the kernel kills the rest."""
        init = next(p for p, i in self._processes().items() if i["pidns"] == pidns and i["nspid"][-1] == "1")
        os.kill(init, signal.SIGKILL)

    def kill_node_running(self, *titles: str, timeout: float = 120) -> str:
        """Wait until ``titles`` run on one worker node, kill that node; returns its PID namespace."""
        ns = self.wait_node_running(*titles, timeout=timeout)
        self.kill_node(ns)
        return ns
