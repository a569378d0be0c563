"""The search-backend interface, and what every backend does the same way.

A backend decides *which* architecture to score next and *where* it runs
(in the spirit of Optuna's ``BaseSampler`` and Ray Tune's ``Searcher``); it
never decides how a candidate is scored (:func:`nas.objective.evaluate_candidate`),
where files go (:class:`nas.run_folder.RunFolder`), or when a broken experiment
stops the search (:class:`Breaker`). :func:`nas.search.run_search` drives one
backend through its whole lifecycle, once per search or ``--resume``::

    backend = backend_class(exp.search.backend)(exp, run, resume=..., address=..., breaker=breaker,
                                                on_records=bar, progress=...)
    with backend:                  # open(): storage / cluster up ... close(): always, even after an error
        backend.seed()             # the experiment's seed architectures (once per run folder)
        backend.search()           # trials until the budget, the deadline or the breaker
        run.remeasure_front(exp, backend.measure)   # front members measured on the device

Contract of each step:

* ``open()`` connects what the trials need and, on ``--resume``, recovers what a
  killed search left half-done (interrupted trials are run again, never lost or
  counted twice). Nothing is scored yet.
* ``seed()`` scores out-of-space seeds outside the sampler (numbered -1, -2, ...,
  ``trial_id`` ``seed-<i>``) and queues in-space seeds as the sampler's first
  trials, both named by :class:`SeedPlan`; a resumed run scores none twice.
* ``search()`` claims trials until ``search.trials`` (seeds included), ``timeout_s``
  or the breaker; every finished trial is one :class:`TrialRecord` in the run folder,
  told to the Optuna sampler with the state :func:`~nas.backends.study.tell` maps it
  to; an architecture scored before is copied (:func:`~nas.backends.study.scored_before`),
  not scored again. After each change ``on_records(all records)`` is called in the
  driver's process; ``breaker.check(records)`` is consulted before each new trial.
* ``measure(arch)`` is a real measurement on the target device, in ms.

``progress`` is the search's own flag (its progress bar on stderr): a backend that
does long one-off work in :meth:`open` (the Ray backend building a lookup table on
the device node) shows its progress when it is set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Optional, Sequence

from search_space import Architecture, SearchSpace

from ..experiment import Experiment, ExperimentError
from ..objective import SearchContext, evaluate_candidate
from ..records import TrialRecord
from ..run_folder import RunFolder

OnRecords = Callable[[list[TrialRecord]], None]


class SearchStopped(ExperimentError):
    """The search stopped because the experiment cannot run as given; ``--resume`` after the fix."""


class Breaker:
    """Stops a search whose first trials all fail alike: the experiment, not a candidate, is broken.

    The window is the first ``n`` in-space trials this search (or this ``--resume``) finishes,
    in finishing order; the trials of the run folder's earlier searches (``known``) are not in
    it, so a resume after the fix starts afresh. Out-of-space seeds are not counted: a lookup
    table or a supernet cannot score them by design. ``n`` 0 or None never stops.
    """

    def __init__(self, n: Optional[int], known: Sequence[str] = ()):
        self.n = n or 0
        self.known = frozenset(known)

    def check(self, records: Sequence[TrialRecord]) -> Optional[str]:
        """The reason the search must stop (one line), or None."""
        if not self.n:
            return None
        new = sorted((r for r in records if r.trial_id not in self.known and r.in_space),
                     key=lambda r: (r.finished, r.number))[: self.n]
        if len(new) < self.n or any(r.state != "FAIL" for r in new) or len({r.reason for r in new}) != 1:
            return None
        return (f"search stopped: the first {self.n} trials all failed with the same reason, so the "
                f"experiment cannot run as given: {new[0].reason} -- fix it and continue with --resume "
                f"(finished trials are kept; search.stop_after_failures: 0 turns this check off)")

    def stop(self, records: Sequence[TrialRecord]) -> None:
        """Raise :class:`SearchStopped` if the breaker trips on ``records``."""
        reason = self.check(records)
        if reason:
            raise SearchStopped(reason)


class SeedPlan:
    """The experiment's seed architectures, split by where they are scored.

    In-space seeds become the sampler's first trials (their parameters queued, the
    trial named after the seed); out-of-space ones are scored beside the sampler and
    never told to it, numbered ``-(i + 1)`` with ``trial_id`` ``seed-<i>`` (``i`` the
    seed's position in ``seeds:``).
    """

    def __init__(self, exp: Experiment, space: SearchSpace):
        seeds = exp.seed_architectures()
        self.in_space = [(name, arch) for name, arch in seeds if space.contains(arch)]
        self.out_of_space = [(i, name, arch) for i, (name, arch) in enumerate(seeds) if not space.contains(arch)]
        self.space = space

    def queued(self) -> list[tuple[str, dict]]:
        """(seed name, sampler parameters) of the in-space seeds, in order."""
        return [(name, self.space.params_of(arch)) for name, arch in self.in_space]

    def todo(self, done_trial_ids: set[str]) -> list[tuple[int, str, Architecture]]:
        """Out-of-space seeds not scored yet."""
        return [(i, name, arch) for i, name, arch in self.out_of_space if seed_trial_id(i) not in done_trial_ids]


def seed_trial_id(index: int) -> str:
    return f"seed-{index}"


def score_seed(ctx: SearchContext, index: int, name: str, arch: Architecture) -> TrialRecord:
    """Score the out-of-space seed ``index`` (in whichever process holds ``ctx``)."""
    return evaluate_candidate(arch, ctx, number=-(index + 1), seed=name, in_space=False,
                              trial_id=seed_trial_id(index))


class SearchBackend(ABC):
    """One search backend; see the module docstring for the lifecycle and its contract."""

    #: the value of ``search.backend`` that selects it
    name: ClassVar[str]

    def __init__(self, exp: Experiment, run: RunFolder, *, resume: bool, breaker: Breaker,
                 on_records: Optional[OnRecords] = None, address: Optional[str] = None, progress: bool = False):
        self.exp = exp
        self.run = run
        self.resume = resume
        self.breaker = breaker
        self.on_records = on_records or (lambda recs: None)
        self.address = address
        self.progress = progress

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def seed(self) -> None: ...

    @abstractmethod
    def search(self) -> None: ...

    @abstractmethod
    def measure(self, arch: Architecture) -> float: ...

    def close(self) -> None:
        """Release what :meth:`open` took (called after an error too)."""

    def __enter__(self) -> "SearchBackend":
        try:
            self.open()
        except BaseException:
            self.close()  # what open() had taken before it failed
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()
