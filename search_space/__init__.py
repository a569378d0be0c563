"""The ShuffleNet design space: descriptions, networks, cost model, search spaces.

>>> from search_space import Architecture, SearchSpace, build_model, presets, profile
>>> arch = presets.get("shufflenet_v2_x1_0")
>>> profile(arch).params
2278604
"""

from . import presets
from .architecture import Architecture, Stage, Stem, Unit, UnitOverride
from .blocks import HeadBlock, StemBlock, UnitBlock, blocks, iter_blocks
from .builder import build_model
from .cost import Profile, profile
from .errors import ArchitectureError, FileFormatError, ShuffleNASError, SpaceError
from .space import SearchSpace, builtin_spaces, load_space

__all__ = [
    "Architecture", "Stage", "Stem", "Unit", "UnitOverride", "SearchSpace", "load_space", "builtin_spaces", "build_model", "presets", "profile", "Profile",
    "blocks", "iter_blocks", "StemBlock", "UnitBlock", "HeadBlock",
    "ShuffleNASError", "ArchitectureError", "SpaceError", "FileFormatError",
]
