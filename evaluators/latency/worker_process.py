"""The measurement worker's process: ``python -m evaluators.latency.worker_process TARGET PROTOCOL``.

Started by :class:`~evaluators.latency.worker.MeasurementWorker` with the
thread-count variables already in its environment; it fixes torch's thread
pools before anything is built (a thread count changed inside a process once
produced a 2.2 s "median", NOTES.md), then answers one JSON request per line
on stdin, one at a time, with one JSON line on its own copy of stdout.
Anything libraries print goes to stderr, which the parent keeps for errors.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import warnings


def pin_to_cpus(threads: int) -> list[int]:
    """Restrict this process to the last ``threads`` CPUs it is allowed on; returns them.

    Done before torch or ONNX Runtime create their thread pools. On a 2-core
    machine with 1 thread the worker gets core 1 and the parent, the search and
    the OS keep core 0.
    """
    allowed = sorted(os.sched_getaffinity(0))
    cpus = allowed[-threads:] if threads <= len(allowed) else allowed
    os.sched_setaffinity(0, cpus)
    return cpus


def _serve(target_json: str, protocol_json: str, out) -> None:
    settings = json.loads(target_json), json.loads(protocol_json)
    pinned = None
    if settings[1].get("pin", True) and settings[0].get("device", "cpu") == "cpu" and hasattr(os, "sched_setaffinity"):
        pinned = pin_to_cpus(int(settings[0].get("threads", 1)))

    import torch

    from search_space import Architecture, presets
    from search_space.errors import ShuffleNASError

    from .runners import arch_module, block_from_dict, block_module, make_timed_run
    from .target import LatencyTarget, MeasurementProtocol, machine_info
    from .timing import measure_timed

    target = LatencyTarget.model_validate_json(target_json)
    protocol = MeasurementProtocol.model_validate_json(protocol_json)
    torch.set_num_threads(target.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already fixed by the environment
        pass

    def reply(obj) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    paired_refs: dict = {}

    def paired_ref(size: int):
        """The reference preset at ``size``, built once per size, for paired timing (below 64 pixels
        its CIFAR-size variant: no stride-2 stem and max-pool, which would shrink it to nothing)."""
        if size not in paired_refs:
            ref = target.apply(presets.get(protocol.reference))
            ref = (presets.cifar(ref) if size < 64 else ref).replace(input_size=size)
            paired_refs[size] = make_timed_run(*arch_module(ref), target, f"reference {protocol.reference}",
                                               clock=protocol.clock)
        return paired_refs[size]

    reply({"ok": True, "ready": True, "pid": os.getpid(), "machine": machine_info(target.device),
           "torch_threads": torch.get_num_threads(), "pinned_cpus": pinned})
    for line in sys.stdin:
        try:
            req = json.loads(line)
            op = req["op"]
            if op == "exit":
                reply({"ok": True})
                return
            if op == "arch":
                arch = Architecture.from_dict(req["arch"])
                module, shape = arch_module(arch)
                what = f"architecture {arch.name or ''}".strip()
            elif op == "reference":
                arch = target.apply(presets.get(protocol.reference))
                module, shape = arch_module(arch)
                what = f"reference {protocol.reference}"
            elif op == "block":
                block = block_from_dict(req["block"])
                module, shape = block_module(block)
                what = f"block {block.key()}"
            else:
                raise ValueError(f"unknown request {op!r}")
            timed_run = make_timed_run(module, shape, target, what, clock=protocol.clock)
            timed_ref = paired_ref(int(req.get("ref_size") or (arch.input_size if op == "arch" else 224))) \
                if protocol.paired and op != "reference" else None
            reply({"ok": True, "result": measure_timed(timed_run, protocol, lock_name=target.device,
                                                       timed_ref=timed_ref)})
        except ShuffleNASError as exc:
            reply({"ok": False, "error": str(exc), "type": exc.__class__.__name__})
        except Exception as exc:  # noqa: BLE001 - report, keep serving
            traceback.print_exc(file=sys.stderr)
            reply({"ok": False, "error": f"{exc.__class__.__name__}: {exc}".splitlines()[0],
                   "type": "internal"})


def main() -> None:
    # Our replies go to a private copy of stdout; whatever a library prints lands on stderr.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    warnings.filterwarnings("ignore")
    _serve(sys.argv[1], sys.argv[2], out)


if __name__ == "__main__":
    main()
