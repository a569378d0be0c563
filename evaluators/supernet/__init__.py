"""One-shot weight-sharing supernet (Single Path One-Shot, Guo et al. 2020).

Train once over a whole SearchSpace, then score any candidate in seconds:

>>> path = train_supernet(space, "digits", SupernetConfig(epochs=5), out="supernet.pt")
>>> SupernetEvaluator(path, "digits").evaluate(space.sample(seed=0)).accuracy

How the choices share weights is explained in :mod:`evaluators.supernet.network`.
"""

from .bn import recalibrate_bn
from .checkpoint import load_supernet, save_checkpoint
from .config import SupernetConfig
from .evaluator import SupernetEvaluator
from .network import Supernet, SupernetError, extract_subnet
from .train import train_supernet

__all__ = ["Supernet", "SupernetConfig", "SupernetError", "SupernetEvaluator", "extract_subnet",
           "load_supernet", "recalibrate_bn", "save_checkpoint", "train_supernet"]
