"""The search: experiment files, one objective, Optuna and Ray Tune backends, Pareto front, export, report.

>>> from nas import load_experiment                   # doctest: +SKIP
>>> from nas.search import run_search
>>> result = run_search(load_experiment("experiments/quickstart.yaml"))

Importing ``nas`` stays light (trial workers and Ray workers import it): the search
itself is :mod:`nas.search`, and Optuna and Ray are imported only by the backend that
runs (:mod:`nas.backends`).
"""

from .experiment import Experiment, ExperimentError, experiment_from_dict, load_experiment
from .records import TrialRecord
from .run_folder import RunFolder

__all__ = ["Experiment", "ExperimentError", "experiment_from_dict", "load_experiment", "TrialRecord", "RunFolder"]
