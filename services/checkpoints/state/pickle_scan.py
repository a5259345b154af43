"""A pass over a pickle's opcodes before anything is loaded: sizes, counts, depth.

:func:`scan` walks the opcodes with :func:`pickletools.genops` (which decodes
arguments but builds no object and calls nothing) and refuses a pickle that
would make the loader demand more than the input holds or recurse in C:

- input longer than :attr:`PickleLimits.max_bytes`;
- a protocol above :data:`pickle.HIGHEST_PROTOCOL`;
- a length-prefixed argument (``BINBYTES8``, ``BINUNICODE8``,
  ``BYTEARRAY8``, ``LONG4``, ``FRAME``, ...) longer than what remains
  (``genops`` refuses it without allocating it);
- more than :attr:`~PickleLimits.max_opcodes` opcodes, more than
  :attr:`~PickleLimits.max_memo` memo entries or a memo index above it;
- an object nested deeper than :attr:`~PickleLimits.max_depth`. Depth is
  tracked symbolically on a stack of depths that follows each opcode's stack
  effect; for immutable containers (tuples, frozensets: the ones Python
  hashes recursively in C, e.g. as dict keys) it is exact, for mutable ones
  it is a lower bound (in-place changes through a memo alias are not seen),
  which is fine because CPython guards their recursive operations itself;
- opcodes that reach outside the pickle (``EXT1/2/4``: the process-global
  copyreg extension registry; ``PERSID``/``BINPERSID``: persistent ids;
  ``NEXT_BUFFER``/``READONLY_BUFFER``: out-of-band buffers).

The scan proves nothing about what the globals named in the pickle do; that
is :mod:`.safe_pickle`'s job.
"""

from __future__ import annotations

import pickle
import pickletools
from dataclasses import dataclass

#: Opcodes that read state from outside the pickle bytes; never accepted.
REFUSED_OPCODES: frozenset[str] = frozenset(
    {"EXT1", "EXT2", "EXT4", "PERSID", "BINPERSID", "NEXT_BUFFER", "READONLY_BUFFER"}
)

#: Opcodes that change the object below their arguments in place (its depth is
#: at least one more than the arguments'), instead of building a new one.
_IN_PLACE: frozenset[str] = frozenset(
    {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
)
_MEMO_PUT: frozenset[str] = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_MEMO_GET: frozenset[str] = frozenset({"GET", "BINGET", "LONG_BINGET"})


class PickleScanError(ValueError):
    """The pickle breaks a limit or uses a refused opcode (safe_pickle wraps it)."""


@dataclass(frozen=True)
class PickleLimits:
    """Bounds a pickle must stay within to be loaded.

    Attributes
    ----------
    max_bytes:
        Longest input accepted (256 MiB): far above any river model this
        project ships, far below what would exhaust a worker.
    max_opcodes:
        Most opcodes (each is at least one byte, so at most ``max_bytes``).
    max_memo:
        Most memo entries, and the highest memo index a ``PUT``/``GET`` may use.
    max_depth:
        Deepest object nesting. ``pickle.dumps`` itself recurses once per
        level and stops near ``sys.getrecursionlimit()`` (1000), so real
        pickles stay well below 2000; a C-level recursion over 2000 levels
        (hashing a nested tuple) is far from the C stack's limit.
    """

    max_bytes: int = 256 * 1024 * 1024
    max_opcodes: int = 32 * 1024 * 1024
    max_memo: int = 8 * 1024 * 1024
    max_depth: int = 2000


DEFAULT_LIMITS = PickleLimits()


_GENERIC, _IN_PLACE_OP, _DUP, _MARK, _PUT, _MEMOIZE, _GET, _REFUSED, _PROTO, _FRAME = range(10)


def _effect(op: pickletools.OpcodeInfo) -> tuple[int, int, int, int]:
    """``(kind, objects popped, objects below the MARK or -1, objects pushed)`` of ``op``."""
    special = {"DUP": _DUP, "MARK": _MARK, "MEMOIZE": _MEMOIZE, "PROTO": _PROTO, "FRAME": _FRAME}
    if op.name in REFUSED_OPCODES:
        kind = _REFUSED
    elif op.name in _IN_PLACE:
        kind = _IN_PLACE_OP
    elif op.name in _MEMO_PUT:
        kind = _PUT
    elif op.name in _MEMO_GET:
        kind = _GET
    else:
        kind = special.get(op.name, _GENERIC)
    before = op.stack_before
    below = before.index(pickletools.markobject) if pickletools.stackslice in before else -1
    return kind, len(before), below, len(op.stack_after)


#: Stack effect of every opcode, looked up once per opcode of a scanned pickle.
_EFFECTS: dict[str, tuple[int, int, int, int]] = {
    op.name: _effect(op) for op in pickletools.opcodes
}


def scan(data: bytes | bytearray | memoryview, limits: PickleLimits = DEFAULT_LIMITS) -> None:
    """Refuse ``data`` unless it is a bounded pickle, without loading it.

    Raises
    ------
    PickleScanError
        Naming the limit or opcode, and the byte position.
    ValueError
        From :func:`pickletools.genops` for malformed or truncated opcodes.
    """
    size = len(data)
    if size > limits.max_bytes:
        raise PickleScanError(f"pickle of {size} bytes exceeds {limits.max_bytes}")
    max_depth, max_memo, max_opcodes = limits.max_depth, limits.max_memo, limits.max_opcodes
    depths: list[int] = []  # nesting depth of each object on the stack
    marks: list[int] = []  # len(depths) at each open MARK
    memo: dict[int, int] = {}
    for count, (op, arg, pos) in enumerate(pickletools.genops(bytes(data)), start=1):
        if count > max_opcodes:
            raise PickleScanError(f"pickle has more than {max_opcodes} opcodes")
        kind, n_before, below, n_after = _EFFECTS[op.name]
        if kind in (_GENERIC, _IN_PLACE_OP):
            if below >= 0:  # pops down to the last MARK (and ``below`` objects under it)
                if not marks:
                    raise PickleScanError(f"{op.name} without a MARK at byte {pos}")
                cut = marks.pop() - below
            else:
                cut = len(depths) - n_before
            if cut < 0:
                raise PickleScanError(f"{op.name} on a too short stack at byte {pos}")
            popped = depths[cut:]
            del depths[cut:]
            if kind == _IN_PLACE_OP:
                depth = max(popped[0], 1 + max(popped[1:], default=0))
            else:
                depth = 1 + max(popped, default=0)
            if depth > max_depth:
                raise PickleScanError(f"pickle nests objects deeper than {max_depth}")
            if n_after:
                depths.append(depth)
        elif kind in (_MEMOIZE, _PUT):
            index = len(memo) if kind == _MEMOIZE else arg
            if not isinstance(index, int) or not 0 <= index < max_memo:
                raise PickleScanError(f"memo index {index!r} at byte {pos} is out of bounds")
            if not depths:
                raise PickleScanError(f"{op.name} on an empty stack at byte {pos}")
            memo[index] = depths[-1]
        elif kind == _GET:
            if arg not in memo:
                raise PickleScanError(f"{op.name} of an unset memo entry at byte {pos}")
            depths.append(memo[arg])
        elif kind == _MARK:
            marks.append(len(depths))
            if len(marks) > max_depth:
                raise PickleScanError(f"pickle nests more than {max_depth} marks")
        elif kind == _DUP:
            if not depths:
                raise PickleScanError(f"DUP on an empty stack at byte {pos}")
            depths.append(depths[-1])
        elif kind == _REFUSED:
            raise PickleScanError(f"pickle uses the refused opcode {op.name} at byte {pos}")
        elif kind == _PROTO and isinstance(arg, int) and arg > pickle.HIGHEST_PROTOCOL:
            raise PickleScanError(f"pickle protocol {arg} is above {pickle.HIGHEST_PROTOCOL}")
        elif kind == _FRAME and isinstance(arg, int) and arg > size - (pos or 0) - 9:
            raise PickleScanError(f"frame of {arg} bytes at byte {pos} exceeds the input")
