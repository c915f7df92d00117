"""Gradient-level balancers: combine the per-task gradients.

Use one with `model.compile(..., balancer=multiloss.aggregators.X())` or its
alias; standalone, `X()(J)` maps a (K, P) matrix to a (P,) direction.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from multiloss.aggregators.base import Aggregator, combine, gram_matrix

__all__ = ["Aggregator", "combine", "gram_matrix"]

# Every module of this package but `base` holds aggregators; each lists its
# public names in `__all__`.
for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _info.name.startswith("_") or _info.name == "base":
        continue
    _module = _importlib.import_module(f"{__name__}.{_info.name}")
    for _name in _module.__all__:
        globals()[_name] = getattr(_module, _name)
        __all__.append(_name)
