"""Dataset spec strings: ``digits``, ``cifar10[:PATH]``, ``fashion-mnist[:PATH]``, ``mnist[:PATH]``, ``folder:PATH``;
and what a check of the files a spec names found (:class:`DatasetSummary`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

from .errors import DataError

#: name -> whether a PATH is forbidden / optional / required
_PATH_RULE = {"digits": "none", "cifar10": "optional", "fashion-mnist": "optional",
              "mnist": "optional", "folder": "required"}
_ALIASES = {"cifar-10": "cifar10", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist"}
FORMS = "digits, cifar10[:PATH], fashion-mnist[:PATH], mnist[:PATH], folder:PATH"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    path: Optional[Path] = None

    @classmethod
    def parse(cls, spec: "str | DatasetSpec") -> "DatasetSpec":
        if isinstance(spec, DatasetSpec):
            return spec
        if not isinstance(spec, str) or not spec.strip():
            raise DataError(f"dataset spec {spec!r} is empty; use one of: {FORMS}")
        name, sep, path = spec.strip().partition(":")
        name = _ALIASES.get(name.lower(), name.lower())
        rule = _PATH_RULE.get(name)
        if rule is None:
            raise DataError(f"unknown dataset {name!r} in spec {spec!r}; use one of: {FORMS}")
        if sep and not path:
            raise DataError(f"dataset spec {spec!r} has an empty PATH after ':'")
        if rule == "none" and path:
            raise DataError(f"dataset {name!r} is built in and takes no PATH (got {spec!r}); use 'digits'")
        if rule == "required" and not path:
            raise DataError(f"dataset spec {spec!r} needs a directory: folder:PATH")
        return cls(name, Path(path).expanduser() if path else None)

    def __str__(self) -> str:
        return f"{self.name}:{self.path}" if self.path else self.name


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`evaluators.data.check_dataset` found: the files pass their format check.

    ``images`` counts the images of the splits the check read (``train``, ``test``); a split
    it did not decode (CIFAR-10's data batches) is left out rather than guessed.
    """

    name: str  # the dataset (``cifar10``, ``folder``, ...)
    source: str  # the file or folder checked ("scikit-learn" for the bundled digits)
    classes: tuple[str, ...]
    images: Mapping[str, int]

    @property
    def num_classes(self) -> int:
        return len(self.classes)
