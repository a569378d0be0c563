"""The search: experiment files, one objective, Optuna and Ray Tune backends, Pareto front, export, report.

>>> from nas import load_experiment, run_search       # doctest: +SKIP
>>> result = run_search(load_experiment("experiments/quickstart.yaml"))

Optuna and Ray are imported only by the backend that runs.
"""

from .experiment import Experiment, ExperimentError, experiment_from_dict, load_experiment
from .records import TrialRecord, read_records, write_records


def run_search(exp, **kwargs):
    """See :func:`nas.search.run_search` (imported lazily: it pulls in torch)."""
    from .search import run_search as _run

    return _run(exp, **kwargs)


__all__ = ["Experiment", "ExperimentError", "experiment_from_dict", "load_experiment", "TrialRecord",
           "read_records", "write_records", "run_search"]
