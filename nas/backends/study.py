"""The Optuna study both backends sample from: sampler, telling results, reusing scores.

The Optuna backend drives a study with ask/tell; the Ray backend's searcher
(:class:`nas.backends.ray.StudySearcher`) drives one too, inside Tune. Both
tell a finished trial the same way (:func:`tell`: the record is kept on the
trial, the latency budget becomes a constraint, PRUNED and FAIL records become
those states) and both copy the record of an architecture scored before
(:func:`scored_before`) instead of scoring it again.
"""

from __future__ import annotations

import time
from typing import Optional

import optuna
from optuna.trial import TrialState

from search_space import Architecture

from ..experiment import Experiment, ExperimentError
from ..objective import arch_key
from ..records import TrialRecord

#: the user attribute of an Optuna trial that holds its record
RECORD_ATTR = "record"
#: the user attribute naming the seed architecture a queued trial scores
SEED_ATTR = "seed"


def make_sampler(name: str, seed: int, trials: Optional[int]) -> optuna.samplers.BaseSampler:
    """The sampler ``search.sampler`` names, seeded."""
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "nsga2":
        # The default population (50) would keep a short search random throughout.
        pop = max(8, min(50, (trials or 100) // 5))
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=pop)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    raise ExperimentError(f"search.sampler: unknown sampler {name!r}")


def optuna_state(rec: TrialRecord) -> TrialState:
    """The Optuna state of a finished trial's record."""
    return {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED}.get(rec.state, TrialState.FAIL)


def tell(study: optuna.Study, trial: optuna.Trial, rec: TrialRecord, exp: Experiment) -> None:
    """Finish ``trial`` with ``rec``: values (and the latency constraint, <= 0 feasible) for a
    COMPLETE record, the state alone otherwise; the record stays on the trial."""
    trial.set_user_attr(RECORD_ATTR, rec.to_dict())
    state = optuna_state(rec)
    if state == TrialState.COMPLETE:
        if exp.latency.budget_ms is not None:
            trial.set_constraint("latency_ms", rec.constraint)
        study.tell(trial, rec.values(exp.objectives))
    else:
        study.tell(trial, state=state)


def scored_before(study: optuna.Study, arch: Architecture, *, number: int, trial_id: str,
                  seed: Optional[str], node: str) -> Optional[TrialRecord]:
    """A copy of the record of a COMPLETE trial of the same architecture, or None.

    Samplers over categorical spaces propose the same point again (TPE did in 4 of 12 trials of
    the CIFAR-10 run); every evaluator here is deterministic for a given architecture and seed,
    so scoring it again would only spend the trial's minutes. The copy is told to the sampler
    with the same values and says which trial it copies (``copy_of``).
    """
    key = arch_key(arch)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        old = t.user_attrs.get(RECORD_ATTR)
        if old and old.get("arch_key") == key and old.get("copy_of") is None:
            now = time.time()
            return TrialRecord.from_dict({**old, "number": number, "trial_id": trial_id, "seed": seed,
                                          "copy_of": old["number"], "started": now, "finished": now,
                                          "accuracy_seconds": 0.0, "latency_seconds": 0.0, "node": node})
    return None
