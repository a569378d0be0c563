"""One-shot weight-sharing supernet (Single Path One-Shot, Guo et al. 2020).

Train once over a whole SearchSpace, then score any candidate in seconds:

>>> path = train_supernet(space, "digits", SupernetConfig.variant("spos", epochs=5), out="supernet.pt")
>>> SupernetEvaluator(path, "digits").evaluate(space.sample(seed=0)).accuracy

How the choices share weights is explained in :mod:`evaluators.supernet.network`,
which paths a step trains in :mod:`evaluators.supernet.sampling`, the training
recipes (SPOS, BigNAS's sandwich, ...) in :mod:`evaluators.supernet.config`,
training on several Ray Train workers in :mod:`evaluators.supernet.distributed`,
and how well a checkpoint ranks networks in :mod:`evaluators.supernet.fidelity`.
"""

from .bn import recalibrate_bn
from .checkpoint import load_supernet, save_checkpoint
from .config import VARIANTS, SupernetConfig
from .evaluator import SupernetEvaluator
from .fidelity import describe_fidelity, read_fidelity, record_fidelity
from .network import Supernet, SupernetError, extract_subnet
from .sampling import PathSampler
from .train import SupernetRun, train_supernet

__all__ = ["PathSampler", "Supernet", "SupernetConfig", "SupernetError", "SupernetEvaluator", "SupernetRun",
           "VARIANTS", "describe_fidelity", "extract_subnet", "load_supernet", "read_fidelity", "recalibrate_bn",
           "record_fidelity", "save_checkpoint", "train_supernet"]
