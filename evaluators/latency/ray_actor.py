"""Latency measurement on a Ray cluster: one named actor on the node that *is* the target device.

The actor is placed by a custom resource (default ``latency_device``) that
only the target device's node offers, e.g.::

    ray start --address=HEAD:6379 --num-cpus=0 --resources='{"latency_device": 1}'

so latency is measured there while training trials (which never ask for that
resource) run elsewhere; ``--num-cpus=0`` keeps Tune from placing trials on it.
The actor owns one :class:`~evaluators.latency.worker.MeasurementWorker` and
handles one call at a time; the worker's machine-wide lock also keeps actors
for different targets on that node from timing at once.

When the actor's node leaves the cluster, :class:`LatencyActorHandle` creates
the actor again on another node that offers the resource and repeats the call
once; when no alive node offers it any more it raises :class:`DeviceNodeLost`.

A lookup table for the device is built there too (:func:`load_or_build_on_device`):
the actor measures, and streams the table as it grows to the caller, who saves
it, so a killed driver resumes the build from its own copy. The table is tagged
with that node's host and refused on any other.

Ray is imported only here, and only when :func:`latency_actor` is called.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from search_space import Architecture, SearchSpace
from search_space.errors import ShuffleNASError
from search_space.io import atomic_write_json

from .lut import HOST_OVERRIDE, LatencyLUT, space_blocks
from .target import LatencyError, LatencyTarget, MeasurementProtocol, host_identity
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

    def host(self) -> dict:
        """:func:`~evaluators.latency.target.host_identity` of this node for the actor's target."""
        return host_identity(self.worker.target)

    def build_lut(self, space: dict, protocol: dict, partial: dict | None, calibration: int, seed: int,
                  save_every_s: float):
        """Build a lookup table on this node (resuming ``partial``, a ``LatencyLUT.to_dict()``); a generator
        (a Ray streaming method): yields the table's ``to_dict()`` as it grows, the last one complete."""
        resume = LatencyLUT.from_dict(partial, self.worker.target, source="partial lookup table") if partial else None
        for lut in LatencyLUT.build_steps(SearchSpace.from_dict(space), self.worker.target,
                                          MeasurementProtocol.model_validate(protocol), progress=False,
                                          calibration=calibration, seed=seed, resume=resume, host_check=False,
                                          save_every_s=save_every_s):
            yield lut.to_dict()

    def info(self) -> dict:
        self.worker.start()
        return {"host": socket.gethostname(), "actor_pid": os.getpid(), "worker_pid": self.worker.pid,
                "target": self.worker.target.to_dict(), "machine": self.worker.machine}

    def close(self) -> None:
        self.worker.close()


class DeviceNodeLost(LatencyError):
    """The latency actor's node left the Ray cluster and no alive node offers its resource now."""


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
    if not offering_nodes(resource, amount):
        raise LatencyError(f"no Ray node offers the resource {resource!r}; start the target device's node with "
                           f"ray start ... --resources='{{\"{resource}\": 1}}' (or pass resources= to ray.init)")
    cls = ray.remote(LatencyActor)
    # "DEFAULT": placed by the resource alone, never in the placement group of the caller (a Tune trial)
    return cls.options(name=name or actor_name(target, resource), namespace=namespace, get_if_exists=True,
                       num_cpus=0, resources={resource: amount}, max_concurrency=1, scheduling_strategy="DEFAULT",
                       ).remote(target.to_dict(), protocol.to_dict())


def offering_nodes(resource: str, amount: float = 0.001) -> list[str]:
    """Ids of the alive nodes that offer at least ``amount`` of ``resource``."""
    import ray

    return [n["NodeID"] for n in ray.nodes()
            if n.get("Alive") and n.get("Resources", {}).get(resource, 0) >= amount]


class LatencyActorHandle:
    """The named latency actor for ``target``, created again where the resource still is if its node dies.

    :meth:`call` runs one actor method and waits for its result. If the actor
    died (``RayActorError``: ``ActorDiedError``, ``ActorUnavailableError``),
    the actor is created again -- Ray places it on an alive node offering
    ``resource`` -- and the call is repeated once. If no alive node offers the
    resource, :class:`DeviceNodeLost` says so (the search cannot measure until
    that node is back). Handles pickle without their actor (looked up by name
    again in the process that uses them).
    """

    def __init__(self, target: LatencyTarget | None = None, resource: str = DEFAULT_RESOURCE,
                 protocol: MeasurementProtocol | None = None, *, recreate_timeout_s: float = 120.0):
        self.target = target or LatencyTarget()
        self.resource = resource
        self.protocol = protocol
        self.recreate_timeout_s = recreate_timeout_s
        self._actor = None

    def __getstate__(self):
        return {**self.__dict__, "_actor": None}

    def actor(self):
        """The actor handle (got or created by name on first use)."""
        if self._actor is None:
            if not offering_nodes(self.resource):
                raise self._lost()
            self._actor = latency_actor(self.target, self.resource, self.protocol)
        return self._actor

    def call(self, method: str, *args):
        import ray
        from ray.exceptions import RayActorError

        try:
            return ray.get(getattr(self.actor(), method).remote(*args))
        except RayActorError:
            self._recreate()
        return ray.get(getattr(self.actor(), method).remote(*args))

    def _recreate(self) -> None:
        """Create the actor again on an alive node offering the resource, and wait until it is up.

        A dead actor keeps its name while its owner lives, so asking by name
        returns it again: it is killed (which frees the name) and the next ask
        creates a new one. The handle that created the actor is kept: the
        actor lives as long as its creator holds that handle. Until Ray has
        noticed that a node is gone (seconds, its node health check) the old
        actor may answer "unavailable": wait until a live one answers, the
        resource has left the cluster, or ``recreate_timeout_s`` has passed.
        """
        import ray
        from ray.exceptions import ActorDiedError, RayActorError

        self._actor = actor = None
        deadline = time.monotonic() + self.recreate_timeout_s
        while True:
            if not offering_nodes(self.resource):
                raise self._lost()
            try:
                if actor is None:
                    actor = latency_actor(self.target, self.resource, self.protocol)
                ready, _ = ray.wait([actor.__ray_ready__.remote()], timeout=1.0)
                if ready:
                    ray.get(ready[0])
                    self._actor = actor
                    return
            except ActorDiedError:
                ray.kill(actor, no_restart=True)  # the dead one, still holding the name
                actor = None
            except RayActorError:
                pass  # unavailable: Ray has not decided yet
            except LatencyError:
                if offering_nodes(self.resource):
                    raise
                continue  # the resource left between the check above and the lookup
            if time.monotonic() > deadline:
                raise LatencyError(f"the latency actor on a node offering {self.resource!r} did not start "
                                   f"within {self.recreate_timeout_s:.0f} s after its node was lost")

    def _lost(self) -> DeviceNodeLost:
        return DeviceNodeLost(
            f"the node offering {self.resource!r} left the Ray cluster; no node offers it now -- "
            f"restart that node (ray start --address=HEAD:PORT --resources='{{\"{self.resource}\": 1}}')")


def ray_connected() -> bool:
    """Whether this process is connected to a Ray cluster (Ray is not imported to find out)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def load_or_build_on_device(handle: LatencyActorHandle, space, path: str | Path,
                            protocol: MeasurementProtocol | None = None, *, calibration: int = 30,
                            seed: int = 1_000_003, host_check: bool = True, override: str = HOST_OVERRIDE,
                            progress: bool = False, save_every_s: float = 10.0) -> LatencyLUT:
    """The lookup table at ``path`` for the node of ``handle``'s actor (the target device).

    A complete table there is loaded and checked against that node's host
    (:meth:`LatencyLUT.check_host`; ``host_check=False`` skips it, ``override`` says how in the
    error). Otherwise the actor builds it on its node, resuming a partial table at ``path``
    (checked the same way), and sends it every ``save_every_s`` while it grows: each copy is
    written atomically at ``path`` here, so a search killed mid-build resumes it. If the
    actor's node is lost mid-build the build resumes, once, on another node offering the
    resource, from the last copy -- which that node refuses if it is another host.
    """
    import ray
    from ray.exceptions import RayActorError, RayTaskError
    from tqdm import tqdm

    sp = space if isinstance(space, SearchSpace) else SearchSpace.from_dict(space)
    path = Path(path)
    protocol = protocol or MeasurementProtocol.quick()
    for attempt in (1, 2):
        host = handle.call("host")
        lut = LatencyLUT.load(path, handle.target, host=host if host_check else None,
                              override=override) if path.is_file() else None
        if lut is not None and lut.meta.get("complete", True):
            return lut
        total = len(space_blocks(sp, handle.target.input_size))
        bar = tqdm(total=total, initial=len(lut.entries) if lut else 0, unit="block", disable=not progress,
                   desc=f"LUT {sp.name} on {host['hostname']}", dynamic_ncols=True)
        try:
            with bar:
                data = None
                for ref in handle.actor().build_lut.remote(sp.to_dict(), protocol.to_dict(),
                                                           lut.to_dict() if lut else None, calibration, seed,
                                                           save_every_s):
                    data = ray.get(ref)
                    atomic_write_json(path, data)
                    bar.update(len(data["entries"]) - bar.n)
            lut = LatencyLUT.from_dict(data, handle.target, source=str(path))
            lut.path = path
            return lut
        except RayTaskError as exc:  # raised on the node: a one-line error of ours stays one line
            if isinstance(exc.cause, ShuffleNASError):
                raise exc.cause.with_traceback(None) from None
            raise
        except RayActorError:
            if attempt == 2:
                raise
            handle._recreate()
    raise AssertionError("unreachable")
