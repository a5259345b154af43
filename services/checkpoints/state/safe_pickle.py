"""A pickle loader that resolves only allow-listed globals.

River models and drift detectors have no tensor form, so they persist by
pickle; a pickle can name any importable callable (``os.system``) and make
the loader call it. :func:`safe_loads` therefore resolves globals through an
allow-list and refuses everything else *before* it is called:

- any class or function defined in a ``river`` module (module prefix
  ``river.``; the resolved object's own ``__module__`` must match too, so a
  river module cannot be used to reach something it merely imported);
- an explicit list of numpy, builtins, collections, functools, copyreg,
  random, datetime, ... names that river models are made of;
- ``builtins.getattr`` only as a guarded version that refuses dunder names
  and module results (pickles of bound methods use it).

Anything else raises :class:`UnsafePickleError` naming the global. Callers
check the file's sha256 against the manifest before calling this.
"""

from __future__ import annotations

import io
import pickle
import types
from typing import Any

from schemas.errors import UnsafePickleError

#: Module prefixes whose own classes and functions may be loaded.
ALLOWED_PREFIXES: tuple[str, ...] = ("river.",)

#: Exact (module, name) pairs allowed besides the prefixes.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("builtins", n)
        for n in (
            "object",
            "set",
            "frozenset",
            "list",
            "dict",
            "tuple",
            "int",
            "float",
            "complex",
            "bool",
            "str",
            "bytes",
            "bytearray",
            "slice",
            "range",
            "type",
            "NoneType",
        )
    ]
    + [("collections", n) for n in ("OrderedDict", "defaultdict", "deque", "Counter")]
    + [("functools", "partial"), ("copyreg", "_reconstructor"), ("copyreg", "__newobj__")]
    + [("random", "Random"), ("math", "inf"), ("math", "nan")]
    + [("datetime", n) for n in ("datetime", "date", "time", "timedelta", "timezone")]
    + [("decimal", "Decimal"), ("fractions", "Fraction"), ("operator", "itemgetter")]
    + [
        (m, n)
        for m in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")
        for n in ("dtype", "ndarray", "scalar", "_reconstruct")
    ]
    + [
        ("numpy.random._pickle", n)
        for n in ("__randomstate_ctor", "__generator_ctor", "__bit_generator_ctor")
    ]
    + [("numpy.random.mtrand", "RandomState"), ("numpy.random._generator", "Generator")]
    + [("numpy.random._pcg64", "PCG64"), ("numpy.random._mt19937", "MT19937")]
    + [("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")]
)


def _is_allowed_object(obj: Any) -> bool:
    """True when ``obj`` is a class or function defined in an allowed prefix."""
    module = getattr(obj, "__module__", None)
    return isinstance(module, str) and module.startswith(ALLOWED_PREFIXES)


def _guarded_getattr(obj: Any, name: str) -> Any:
    """``getattr`` for pickled bound methods: no dunders, no modules, no foreign callables."""
    if not isinstance(name, str) or name.startswith("__"):
        raise UnsafePickleError("pickle uses getattr on a dunder name", name=repr(name))
    result = getattr(obj, name)
    if isinstance(result, types.ModuleType):
        raise UnsafePickleError("pickle uses getattr to reach a module", name=name)
    if isinstance(result, types.MethodType | types.BuiltinMethodType):
        owner = getattr(result, "__self__", None)
        if not _is_allowed_object(owner if isinstance(owner, type) else type(owner)):
            raise UnsafePickleError("pickle uses getattr on a foreign object", name=name)
    elif isinstance(result, types.FunctionType | type) and not _is_allowed_object(result):
        raise UnsafePickleError("pickle uses getattr to reach a foreign callable", name=name)
    return result


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose :meth:`find_class` consults the allow-list."""

    def __init__(self, file: io.BytesIO, *, source: str | None = None) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        """Resolve ``module.name`` if allowed, else raise :class:`UnsafePickleError`."""
        qualified = f"{module}.{name}"
        if (module, name) == ("builtins", "getattr"):
            return _guarded_getattr
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if module.startswith(ALLOWED_PREFIXES) and "__" not in name:
            obj = super().find_class(module, name)
            if not isinstance(obj, types.ModuleType) and _is_allowed_object(obj):
                return obj
        raise UnsafePickleError(
            f"pickle names a global outside the allow-list: {qualified}",
            name=qualified,
            path=self.source,
        )


def safe_loads(data: bytes, *, source: str | None = None) -> Any:
    """Unpickle ``data`` allowing only the allow-listed globals.

    Parameters
    ----------
    data:
        The pickle bytes, already checked against the manifest's sha256.
    source:
        Where the bytes came from (file name), for the error message.

    Raises
    ------
    UnsafePickleError
        When the pickle names a global outside the allow-list, or is not a
        valid pickle at all.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError) as exc:
        raise UnsafePickleError(f"pickle cannot be loaded safely: {exc}", path=source) from exc
