"""Modules whose code runs when first used rather than when something imports them.

A river package imports every subpackage at its top, and several of those
import libraries a driftloop model never uses: ``river.linear_model``
imports ``river.proba`` (for its Bayesian regression), which imports all of
``scipy.stats``; ``river.drift`` imports its example data sets, which import
river's data set readers, which import ``scipy.io``; ``river.metrics``
imports ``scipy.integrate`` for ROC AUC; ``scipy.special``, which river's
losses use, imports numpy's Fortran wrapper generator and test tools.
Measured with ``python -X importtime``, that was more than a third of what a
river trainer imports before it starts (see ``benchmarks.recovery``).

:func:`defer` names modules to defer: from then on, importing one of them
(``import x``, ``from x import y`` of a submodule, a parent's ``from . import
x``) does everything an import does (parents first, ``sys.modules``, the
attribute on the parent) except running the module's code. The first read of
an attribute the module does not have yet (``stats.ks_2samp``, ``from
river.proba import Gaussian``), or ``dir()``, runs it in that same module
object, so every holder of the module sees the real one: the module runs
once, in full, only later. ``vars()`` and ``__dict__`` do not run it
(:func:`loaded` does, for code that reads a module's namespace). A deferred
package's submodules import without running it (its ``__path__`` is set).
A module already imported is not affected.

:data:`RIVER_UNUSED` lists what a river model of driftloop does not use at
start-up; :func:`defer_river_extras` defers them (``services.learning``
calls it when it is imported, before anything imports river). A model that
does use one, a Hoeffding tree (``river.tree``) say, loads it when its
factory resolves it: nothing is lost but the import's place in time.

Thread safety: a module's first run holds a lock of its own; another thread
reading a missing attribute meanwhile waits for it (Python 3.11's
``importlib.util.LazyLoader`` does not).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

#: What a river model does not use at start-up (see the module docstring).
RIVER_UNUSED: tuple[str, ...] = (
    "scipy.stats",  # river.proba, river.metrics.geometric_mean, river.drift.kswin
    "scipy.integrate",  # river.metrics.roc_auc
    "scipy.ndimage",  # river.preprocessing.lda
    "scipy.sparse",  # river.feature_extraction.vectorize, river.naive_bayes
    "river.proba",  # river.linear_model.bayesian_lin_reg: the whole of scipy.stats
    "river.tree",  # river.preprocessing, river.feature_extraction
    "river.datasets",  # data set readers: river.stream, scipy.io
    "river.drift.datasets",  # imports river.datasets
    # scipy.special's array API layer copies numpy's namespace, its lazy submodules too:
    "numpy.f2py",  # the Fortran wrapper generator
    "numpy.testing",
    "numpy.ctypeslib",
)

_LOADER = "__deferred_loader__"
_LOCK = "__deferred_lock__"


class _Deferred(ModuleType):
    """A module whose code has not run yet; it runs at the first missing attribute."""

    __slots__ = ()

    def __getattr__(self, attr: str) -> Any:
        _run(self)
        return ModuleType.__getattribute__(self, attr)

    def __dir__(self) -> Iterable[str]:
        _run(self)
        return ModuleType.__dir__(self)


def _run(module: ModuleType) -> None:
    """Run ``module``'s code if it has not run (nothing while it runs in this thread)."""
    lock = module.__dict__.get(_LOCK)
    if lock is None:  # ran
        return
    with lock:
        loader = module.__dict__.pop(_LOADER, None)
        if loader is None:  # ran meanwhile in another thread, or runs in this one (a cycle)
            return
        try:
            loader.exec_module(module)
        except BaseException:
            if sys.modules.get(module.__name__) is module:
                del sys.modules[module.__name__]  # as a failed import leaves it
            raise
        finally:
            module.__class__ = ModuleType
            module.__dict__.pop(_LOCK, None)


class _DeferringLoader(importlib.abc.Loader):
    """Wraps a module's own loader: creates the module, leaves its code for later."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__.loader = self.loader  # type: ignore[union-attr]  # set by the import
        module.__loader__ = self.loader
        module.__dict__[_LOADER] = self.loader
        module.__dict__[_LOCK] = threading.RLock()
        module.__class__ = _Deferred


class _DeferringFinder(importlib.abc.MetaPathFinder):
    """Finds the deferred modules as the path finder does, with a deferring loader."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return spec  # not a plain Python module: imported as usual
        spec.loader = _DeferringLoader(spec.loader)
        return spec


_FINDER = _DeferringFinder()


def defer(names: Iterable[str]) -> None:
    """Defer the code of the modules ``names`` (see the module docstring) from now on."""
    _FINDER.names.update(names)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def is_deferred(name: str) -> bool:
    """Whether module ``name`` is in ``sys.modules`` and its code has not run yet."""
    module = sys.modules.get(name)
    return module is not None and _LOADER in module.__dict__


def loaded(module: ModuleType) -> ModuleType:
    """``module``, its code run first if it was deferred (for readers of ``vars()``)."""
    _run(module)
    return module


def defer_river_extras() -> None:
    """Defer :data:`RIVER_UNUSED`."""
    defer(RIVER_UNUSED)
