"""Latency measurement on a Ray cluster: one named actor on the node that *is* the target device.

The actor is placed by a custom resource (default ``latency_device``) that
only the target device's node offers, e.g.::

    ray start --address=HEAD:6379 --num-cpus=0 --resources='{"latency_device": 1}'

so latency is measured there while training trials (which never ask for that
resource) run elsewhere; ``--num-cpus=0`` keeps Tune from placing trials on it.
The actor owns one :class:`~evaluators.latency.worker.MeasurementWorker` and
handles one call at a time; the worker's machine-wide lock also keeps actors
for different targets on that node from timing at once.

Ray is imported only here, and only when :func:`latency_actor` is called.
"""

from __future__ import annotations

import os
import socket

from search_space import Architecture

from .target import LatencyError, LatencyTarget, MeasurementProtocol
from .worker import MeasurementWorker

DEFAULT_RESOURCE = "latency_device"
NAMESPACE = "shufflenas"


class LatencyActor:
    """The actor's body: plain Python, made remote by :func:`latency_actor`."""

    def __init__(self, target: dict, protocol: dict):
        self.worker = MeasurementWorker(LatencyTarget.from_dict(target), MeasurementProtocol.model_validate(protocol))

    def latency(self, arch: dict) -> dict:
        """``LatencyResult.to_dict()`` of ``arch`` (an ``Architecture.to_dict()``) measured on this node."""
        return self.worker.latency(Architecture.from_dict(arch)).to_dict()

    def reference(self) -> dict:
        return self.worker.reference().to_dict()

    def drift(self) -> dict:
        return self.worker.drift()

    def info(self) -> dict:
        self.worker.start()
        return {"host": socket.gethostname(), "actor_pid": os.getpid(), "worker_pid": self.worker.pid,
                "target": self.worker.target.to_dict(), "machine": self.worker.machine}

    def close(self) -> None:
        self.worker.close()


def actor_name(target: LatencyTarget, resource: str = DEFAULT_RESOURCE) -> str:
    t = target
    return (f"shufflenas-latency/{resource}/{t.device}-{t.runtime}-t{t.threads}-b{t.batch}"
            f"-r{t.input_size or 'own'}-{t.dtype}")


def latency_actor(target: LatencyTarget | None = None, resource: str = DEFAULT_RESOURCE,
                  protocol: MeasurementProtocol | None = None, name: str | None = None,
                  namespace: str = NAMESPACE, amount: float = 0.001):
    """Get or create the named latency actor for ``target`` on a node offering ``resource``.

    Returns an actor handle: ``ray.get(handle.latency.remote(arch.to_dict()))`` is a
    ``LatencyResult`` dict. The actor asks for ``amount`` of the resource (placement only,
    so actors for several targets fit on the device node) and no CPU. Raises a one-line
    :class:`LatencyError` if Ray is not initialised or no node offers the resource.
    """
    import ray

    target = target or LatencyTarget()
    protocol = protocol or MeasurementProtocol()
    if not ray.is_initialized():
        raise LatencyError("Ray is not initialised; call ray.init(address=...) before latency_actor()")
    offered = ray.cluster_resources().get(resource, 0)
    if offered < amount:
        raise LatencyError(f"no Ray node offers the resource {resource!r}; start the target device's node with "
                           f"ray start ... --resources='{{\"{resource}\": 1}}' (or pass resources= to ray.init)")
    cls = ray.remote(LatencyActor)
    return cls.options(name=name or actor_name(target, resource), namespace=namespace, get_if_exists=True,
                       num_cpus=0, resources={resource: amount}, max_concurrency=1,
                       ).remote(target.to_dict(), protocol.to_dict())
