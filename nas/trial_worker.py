"""Accuracy evaluation in a watched child process: per-trial time and memory limits.

With ``search.trial_timeout_s`` or ``search.trial_memory_mb`` set,
:class:`~nas.objective.SearchContext` scores accuracy through a
:class:`TrialWorker`: one long-lived child process (``python -m
nas.trial_worker``, a fresh interpreter) that builds the accuracy evaluator
once and keeps it across trials, so a dataset or a supernet is loaded once.
While a trial runs the parent watches the child a few times a second and
kills it when the trial's wall-clock time or the child's resident memory (RSS,
from ``/proc``) goes over the limit; the trial then fails with a
:class:`TrialFault` saying why, and the next trial starts a fresh child.

The child is a fresh interpreter rather than a ``multiprocessing`` spawn: spawn
re-imports the parent's ``__main__``, which inside a Ray worker is Ray's own
worker script. Requests and replies are pickled over two pipes
(``multiprocessing.connection.Connection``). The per-epoch callback (Optuna
pruning, Ray Tune reports; True stops training) is relayed: the child sends
each call and waits for the parent's answer.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
import traceback
import weakref
from pathlib import Path
from multiprocessing.connection import Connection, wait
from typing import Callable, Optional

from evaluators.base import AccuracyResult, EpochCallback
from search_space import Architecture

from .experiment import ExperimentError

#: How often the parent checks the child's time and memory while a trial runs.
POLL_S = 0.1
#: Longest wait for a fresh child to import and build its evaluator.
START_TIMEOUT_S = 300.0


class TrialFault(Exception):
    """A trial the worker stopped or lost (time limit, memory limit, killed); the message is the reason."""


class _RemoteTraceback(Exception):
    """The child's traceback, chained as the cause of an exception re-raised in the parent."""

    def __str__(self) -> str:
        return self.args[0]


def describe_failure(exc: BaseException) -> str:
    """The reason a failed evaluation is recorded with (after ``"<stage>: "``)."""
    msg = " ".join(str(exc).split())
    if isinstance(exc, TrialFault):
        return msg
    name = type(exc).__name__
    if isinstance(exc, MemoryError) or name == "OutOfMemoryError":  # torch's (CUDA) out-of-memory error
        return f"out of memory: {name}: {msg}"
    return f"{name}: {msg}"


def rss_mb(pid: int) -> Optional[float]:
    """Resident memory of process ``pid`` in MB (VmRSS of /proc/PID/status); None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        return None
    return None


def memory_limit_supported() -> bool:
    return os.path.isfile(f"/proc/{os.getpid()}/status")


class TrialWorker:
    """A child process scoring architectures with the evaluator ``factory()`` builds, under limits.

    ``factory`` is pickled to the child (a module-level function or a
    ``functools.partial`` of one). ``timeout_s`` bounds each :meth:`evaluate`
    call's wall-clock time, ``memory_mb`` the child's RSS; either may be None.
    """

    def __init__(self, factory: Callable[[], object], *, timeout_s: Optional[float] = None,
                 memory_mb: Optional[int] = None):
        self.factory = factory
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.starts = 0  # children started (1 + restarts after kills)
        self._proc: Optional[subprocess.Popen] = None
        self._conn: Optional[_Duplex] = None
        self._finalizer = None

    # ---- process lifetime ---------------------------------------------------
    @property
    def pid(self) -> Optional[int]:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> "TrialWorker":
        if self._proc is not None and self._proc.poll() is not None:
            self.kill()  # died while idle: reap it, start afresh
        if self._proc is not None:
            return self
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "nas.trial_worker", str(to_child_r), str(from_child_w)],
                                    pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL, env=_child_env())
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        conn = _Duplex(Connection(from_child_r, writable=False), Connection(to_child_w, readable=False))
        self._proc, self._conn = proc, conn
        self._finalizer = weakref.finalize(self, _kill, proc, conn)
        self.starts += 1
        try:
            conn.send(("init", pickle.dumps(self.factory), list(sys.path)))
            self._wait(START_TIMEOUT_S, None, "while the trial worker started")  # ("ready", pid)
        except BaseException:
            self.kill()
            raise
        return self

    def close(self) -> None:
        """Ask the child to exit (killed if it does not within a few seconds)."""
        if self._proc is None:
            return
        try:
            self._conn.send(("exit",))
            self._proc.wait(timeout=5)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
        self._finalizer()
        self._proc = self._conn = None

    def kill(self) -> None:
        if self._proc is not None:
            self._finalizer()
        self._proc = self._conn = None

    def __enter__(self) -> "TrialWorker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- requests ---------------------------------------------------------------
    def evaluate(self, arch: Architecture, callback: EpochCallback | None = None) -> AccuracyResult:
        """Score ``arch`` in the child; raises :class:`TrialFault` when a limit is hit or the child dies,
        and the evaluator's own exception (with the child's traceback as its cause) when it raises."""
        self.start()
        t0 = time.monotonic()
        try:
            self._conn.send(("evaluate", arch.to_dict(), callback is not None))
        except OSError:  # the child died since it was last checked
            raise self._died() from None
        res, peak = self._wait(self.timeout_s, callback, "")
        res.extra = {**(res.extra or {}), "trial_worker": {
            "pid": self.pid, "peak_rss_mb": round(peak, 1), "seconds": round(time.monotonic() - t0, 3)}}
        return res

    def _wait(self, limit_s: Optional[float], callback, during: str):
        """Serve relayed callbacks until the child replies; enforce the limits meanwhile."""
        t0, peak = time.monotonic(), 0.0
        proc, conn = self._proc, self._conn
        while True:
            ready = wait([conn.reader], timeout=POLL_S)
            if not ready and proc.poll() is not None:
                raise self._died()
            if ready:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    raise self._died() from None
                if msg[0] == "epoch":
                    try:
                        stop = bool(callback(*msg[1:]))
                    except BaseException:
                        self.kill()  # the child waits for an answer that will not come
                        raise
                    conn.send(("answer", stop))
                    continue
                if msg[0] == "error":
                    exc, tb = msg[1], msg[2]
                    exc.__cause__ = _RemoteTraceback(tb)
                    raise exc
                return msg[1], max(peak, rss_mb(proc.pid) or 0.0)
            elapsed = time.monotonic() - t0
            if limit_s is not None and elapsed > limit_s:
                self.kill()
                if during:
                    raise TrialFault(f"timeout: no reply within {limit_s:g} s {during}")
                raise TrialFault(f"timeout: exceeded search.trial_timeout_s={limit_s:g} s")
            rss = rss_mb(proc.pid) or 0.0
            peak = max(peak, rss)
            if self.memory_mb is not None and rss > self.memory_mb:
                self.kill()
                if during:  # every trial would fail the same way: stop the search instead
                    raise ExperimentError(
                        f"search.trial_memory_mb={self.memory_mb} is below what the trial worker needs "
                        f"before any trial (RSS {rss:.0f} MB {during}); raise it")
                raise TrialFault(f"out of memory: RSS {rss:.0f} MB > search.trial_memory_mb={self.memory_mb}")

    def _died(self) -> TrialFault:
        proc = self._proc
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        self.kill()
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (the kernel's out-of-memory killer sends SIGKILL)" if -code == signal.SIGKILL else ""
            return TrialFault(f"trial worker killed by {name}{hint}")
        return TrialFault(f"trial worker exited with status {code}")


class _Duplex:
    """A read connection and a write connection used as one."""

    def __init__(self, reader: Connection, writer: Connection):
        self.reader, self.writer = reader, writer

    def send(self, obj) -> None:
        self.writer.send(obj)

    def recv(self):
        return self.reader.recv()

    def close(self) -> None:
        for c in (self.reader, self.writer):
            try:
                c.close()
            except OSError:
                pass


def _child_env() -> dict:
    """The parent's environment, with this project's root importable (``python -m nas.trial_worker``)."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, path]) if path else root}


def _kill(proc: subprocess.Popen, conn: _Duplex) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    conn.close()


# ---- the child ---------------------------------------------------------------------------

def exit_with_parent() -> None:
    """End this process when the parent is gone (a killed search must not leave trainings behind)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def _reply_error(conn: _Duplex, exc: BaseException) -> None:
    tb = "".join(traceback.format_exception(exc))[-4000:]
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 -- an exception that does not survive pickling is sent as text
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    conn.send(("error", exc, tb))


def _serve(conn: _Duplex) -> None:
    _, factory, path = conn.recv()  # ("init", pickled factory, the parent's sys.path)
    sys.path.extend(p for p in path if p not in sys.path)  # the factory may live in a module only the parent sees
    try:
        evaluator = pickle.loads(factory)()
    except BaseException as exc:  # noqa: BLE001 -- reported to the parent, which decides
        _reply_error(conn, exc)
        return
    conn.send(("ready", os.getpid()))

    def relay(epoch: int, acc: float):
        conn.send(("epoch", epoch, acc))
        return conn.recv()[1]

    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "exit":
            return
        arch, with_callback = Architecture.from_dict(msg[1]), msg[2]
        try:
            res = evaluator.evaluate(arch, callback=relay if with_callback else None)
        except BaseException as exc:  # noqa: BLE001 -- every failure goes back to the parent
            _release_memory()
            _reply_error(conn, exc)
            continue
        _release_memory()  # before the reply: the next trial's memory limit starts from the idle RSS
        conn.send(("result", res))


def _release_memory() -> None:
    """Hand memory freed by the last trial back to the OS, so the next one starts from the idle RSS.

    No ``gc.collect()``: reference counting already freed the trial's tensors, and a full
    collection over torch's objects took 0.5-1 s on a loaded 2-core machine."""
    try:
        ctypes.CDLL(None).malloc_trim(0)  # glibc keeps freed heap pages otherwise
    except (AttributeError, OSError):  # not glibc
        pass


if __name__ == "__main__":
    exit_with_parent()
    _serve(_Duplex(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)))
