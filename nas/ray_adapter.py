"""Every Ray internal this project relies on, in one place, each with why no public API serves.

Checked against Ray 2.60.0 (``ray[tune]``).
``tests/test_ray_backend.py::test_ray_internals_still_where_the_adapter_looks`` uses each
function below against a real local Ray and fails when one of them moves; a Ray upgrade
starts there. Nothing else imports ``ray._private`` or
reads Ray's message texts.

* Tune settings (:func:`tune_environment`): Tune reads a few behaviours only from
  environment variables, when a search runs; they are set for the search and put back after.
* The callbacks of a restored Tuner (:func:`restored_callbacks`): ``Tuner.restore`` unpickles
  the ``RunConfig`` saved at the first start and offers no way to pass callbacks again,
  so the driver reaches the restored instances to hand them what is not pickled.
* Tune's staging folder (:func:`staging_dir`): where the driver writes experiment state
  before syncing it, snapshotted by :mod:`nas.backends.tune_state`.
* A trial's failures (:func:`trial_failure`): the exception Tune pickled beside the trial,
  its ``error.txt`` (one ``Failure # N`` block per failure), and the GCS's wording for an
  actor lost with its node; the node of an actor (:func:`actor_node`) comes from the GCS
  actor table (``ray.util.state`` needs the dashboard, which a private cluster does not start).
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from types import MappingProxyType
from typing import Iterator, Optional

import cloudpickle
import ray
from ray._private.state import actors as _gcs_actors

CHECKED_AGAINST = "2.60.0"

#: what Tune reads from the environment while a search runs
TUNE_ENVIRONMENT = MappingProxyType({
    "TUNE_GLOBAL_CHECKPOINT_S": "0",  # save the experiment state after every step (see tune_state)
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no per-trial CSV/JSON/TensorBoard files: records are ours
    "RAY_AIR_NEW_OUTPUT": "0",  # the new output engine prints to stdout even at verbose=0
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",  # each failure's reason is in its record
    "RAY_USAGE_STATS_ENABLED": "0",
})

_FAILURE_BLOCK = re.compile(r"^Failure # \d+ ", re.M)  # Tune's Trial.handle_error, error.txt
_ACTOR_ID = re.compile(r"actor_id: ([0-9a-f]+)")  # ray.exceptions.ActorDiedError's message
_NODE_DIED = re.compile(r"node has died\. Node Id: ([0-9a-f]+)")  # the GCS's death cause of an actor


#: settings the search depends on (a kill-safe state, a clean stdout); the others yield to a user's export
FORCED = frozenset({"TUNE_GLOBAL_CHECKPOINT_S", "RAY_AIR_NEW_OUTPUT"})


@contextmanager
def tune_environment() -> Iterator[None]:
    """:data:`TUNE_ENVIRONMENT` set for the duration of a search, then put back as it was."""
    saved = {k: os.environ.get(k) for k in TUNE_ENVIRONMENT}
    for k, v in TUNE_ENVIRONMENT.items():
        if k in FORCED:
            os.environ[k] = v
        else:
            os.environ.setdefault(k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def restored_callbacks(tuner) -> list:
    """The callback instances a ``Tuner.restore``-d tuner will call (unpickled from its first start)."""
    return list(tuner._local_tuner.get_run_config().callbacks or [])


def staging_dir(trial) -> str:
    """The driver-side folder Tune writes the experiment state files to before syncing them."""
    return trial.storage.experiment_driver_staging_path


def trial_exception(trial) -> Optional[BaseException]:
    """The exception of ``trial``'s latest failure (pickled by Tune beside its error.txt), or None."""
    try:
        with open(trial.pickled_error_file, "rb") as f:
            return cloudpickle.load(f)
    except Exception:  # noqa: BLE001 -- no pickled error (or an unpicklable one): the text is used instead
        return None


def error_text(trial) -> str:
    path = trial.error_file
    return Path(path).read_text() if path and os.path.isfile(path) else ""


def failure_count(trial) -> int:
    """How many times ``trial`` failed, one death of its worker counted once (see :func:`failures_in`)."""
    return failures_in(error_text(trial)) or trial.run_metadata.num_failures


def failures_in(error_text: str) -> int:
    """The failures a trial's ``error.txt`` holds, those naming the same actor counted once.

    Tune can count one death twice (the running task and the actor each report it; seen when
    a node died just as a trial started).
    """
    blocks = _FAILURE_BLOCK.split(error_text)[1:]
    return len({(m[1] if (m := _ACTOR_ID.search(b)) else i) for i, b in enumerate(blocks)})


def dead_node(text: str) -> str:
    """The node id an actor died with, from its error text ("" if it did not die with its node)."""
    m = _NODE_DIED.search(text)
    return m[1] if m else ""


def actor_node(actor_id: str) -> str:
    """The node id ``actor_id`` was placed on, from the GCS actor table ("" if unknown)."""
    try:
        return _gcs_actors(actor_id=actor_id)["Address"]["NodeID"]
    except Exception:  # noqa: BLE001 -- unknown actor or unreachable GCS: the failure is reported as is
        return ""


def node_left(node: str, wait_s: float = 30.0) -> bool:
    """Whether ``node`` is (or within ``wait_s`` becomes) dead for the cluster: on a loaded machine
    a trial whose node was killed can fail before Ray's health check has declared the node dead."""
    deadline = time.monotonic() + wait_s
    while True:
        if not {n["NodeID"]: n.get("Alive") for n in ray.nodes()}.get(node, False):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(1.0)


def trial_failure(trial) -> tuple[str, str]:
    """(one-line reason, id of the node lost with the trial's worker or "") of its latest failure."""
    exc = trial_exception(trial)
    text = str(exc) if exc is not None else ""
    if not text:
        text = error_text(trial)
    node = dead_node(text)
    if not node and isinstance(exc, ray.exceptions.ActorUnavailableError) and exc.actor_id:
        # the connection dropped before Ray declared the node dead: the error does not name it
        placed = actor_node(exc.actor_id)
        node = placed if placed and node_left(placed) else ""
    if node:
        return f"its node {node} left the Ray cluster (the trial's worker died with it)", node
    lines = [" ".join(x.split()) for x in text.splitlines() if x.strip()]
    return (lines[-1] if lines else "unknown error")[:300], ""
