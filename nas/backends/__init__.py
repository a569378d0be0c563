"""Search backends: one module per backend behind one interface (:mod:`nas.backends.base`).

:func:`backend_class` imports only the backend a search uses (Ray takes seconds to import).
"""

from __future__ import annotations

from importlib import import_module
from types import MappingProxyType

from ..experiment import ExperimentError
from .base import Breaker, SearchBackend, SearchStopped

#: ``search.backend`` -> (module, class) of the backend
BACKENDS = MappingProxyType({"optuna": ("nas.backends.optuna", "OptunaBackend"),
                             "ray": ("nas.backends.ray", "RayBackend")})


def backend_class(name: str) -> type[SearchBackend]:
    """The backend ``search.backend`` names."""
    if name not in BACKENDS:
        raise ExperimentError(f"search.backend: unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    module, cls = BACKENDS[name]
    return getattr(import_module(module), cls)


__all__ = ["BACKENDS", "Breaker", "SearchBackend", "SearchStopped", "backend_class"]
