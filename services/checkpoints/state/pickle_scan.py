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


def scan(data: bytes | bytearray | memoryview, limits: PickleLimits = DEFAULT_LIMITS) -> None:
    """Refuse ``data`` unless it is a bounded pickle, without loading it.

    Raises
    ------
    PickleScanError
        Naming the limit or opcode, and the byte position.
    ValueError
        From :func:`pickletools.genops` for malformed or truncated opcodes.
    """
    if len(data) > limits.max_bytes:
        raise PickleScanError(f"pickle of {len(data)} bytes exceeds {limits.max_bytes}")
    depths: list[int] = []  # nesting depth of each object on the stack
    marks: list[int] = []  # len(depths) at each open MARK
    memo: dict[int, int] = {}
    count = 0
    for op, arg, pos in pickletools.genops(bytes(data)):
        count += 1
        name = op.name
        if count > limits.max_opcodes:
            raise PickleScanError(f"pickle has more than {limits.max_opcodes} opcodes")
        if name in REFUSED_OPCODES:
            raise PickleScanError(f"pickle uses the refused opcode {name} at byte {pos}")
        if name == "PROTO" and isinstance(arg, int) and arg > pickle.HIGHEST_PROTOCOL:
            raise PickleScanError(f"pickle protocol {arg} is above {pickle.HIGHEST_PROTOCOL}")
        if name == "FRAME" and isinstance(arg, int) and arg > len(data) - (pos or 0) - 9:
            raise PickleScanError(f"frame of {arg} bytes at byte {pos} exceeds the input")
        if name == "MARK":
            marks.append(len(depths))
            if len(marks) > limits.max_depth:
                raise PickleScanError(f"pickle nests more than {limits.max_depth} marks")
            continue
        if name in _MEMO_PUT or name == "MEMOIZE":
            index = len(memo) if name == "MEMOIZE" else arg
            if not isinstance(index, int) or not 0 <= index < limits.max_memo:
                raise PickleScanError(f"memo index {index!r} at byte {pos} is out of bounds")
            if not depths:
                raise PickleScanError(f"{name} on an empty stack at byte {pos}")
            memo[index] = depths[-1]
            continue
        if name in _MEMO_GET:
            if arg not in memo:
                raise PickleScanError(f"{name} of an unset memo entry at byte {pos}")
            depths.append(memo[arg])
            continue
        popped = _pop(op, depths, marks, pos or 0)
        if name in _IN_PLACE:
            target, *items = popped
            depth = max(target, 1 + max(items, default=0))
        elif name == "DUP":
            depth = popped[0]
        else:
            depth = 1 + max(popped, default=0)
        if depth > limits.max_depth:
            raise PickleScanError(f"pickle nests objects deeper than {limits.max_depth}")
        depths.extend([depth] * len(op.stack_after))
    if len(memo) > limits.max_memo:
        raise PickleScanError(f"pickle memoizes more than {limits.max_memo} objects")


def _pop(op: pickletools.OpcodeInfo, depths: list[int], marks: list[int], pos: int) -> list[int]:
    """Pop what ``op`` consumes (down to the last MARK for slice opcodes)."""
    before = op.stack_before
    if pickletools.stackslice in before:
        if not marks:
            raise PickleScanError(f"{op.name} without a MARK at byte {pos}")
        mark = marks.pop()
        # Objects listed before the mark (APPENDS' list) sit below it.
        below = before.index(pickletools.markobject)
        if mark < below:
            raise PickleScanError(f"{op.name} on a too short stack at byte {pos}")
        popped = depths[mark - below :]
        del depths[mark - below :]
        return popped
    n = len(before)
    if n > len(depths):
        raise PickleScanError(f"{op.name} on a too short stack at byte {pos}")
    popped = depths[len(depths) - n :]
    del depths[len(depths) - n :]
    return popped
