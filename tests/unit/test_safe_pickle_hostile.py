"""Hostile pickles, crafted opcode by opcode: each is refused as UnsafePickleError, runs nothing.

Guards the restricted unpickler against what the old one let through. On
main before this change these failed (the crafted pickle loaded, ran code,
or crashed the loader with another exception or the interpreter itself):

- ``getattr(numpy.ndarray, "tofile")`` / ``"dump"`` wrote a file; a
  ``river.stream.Cache``'s ``clear_all`` deleted one (method descriptors and
  bound methods reached through allowed classes);
- river classes and functions that do I/O, import, unpickle or evaluate loaded
  by module prefix (``river.stream.*``, ``river.datasets.*``,
  ``FuncTransformer``, ...), and dotted names such as
  ``Pipeline.learn_one``;
- ``functools.partial`` / ``copyreg._reconstructor`` wrapping those;
- ``EXT1/2/4`` resolved through the process-global copyreg registry;
- ``BUILD`` on a class patched it for the whole process;
- a callable the pickle built (a partial) was called by ``OBJ``; a river
  class was called with pickle-chosen arguments; numpy's RandomState ctor
  called a river initializer asking for 8 TiB (``MemoryError`` escaped);
- a ``BINBYTES8``/``BYTEARRAY8`` claiming a petabyte, a huge memo index:
  ``MemoryError`` escaped; protocol 6: ``ValueError`` escaped;
- a truncated Rust detector state: pyo3's ``PanicException`` (a
  ``BaseException``) escaped;
- 300k nested tuples used as a dict key: the interpreter died (SIGSEGV);
  100k nested lists loaded;
- no input size or opcode limit existed.

(Refused on main too, kept as regressions: ``os.system`` by each opcode,
dangerous builtins, ``EXT*`` naming a forbidden global, persistent ids,
malformed bytes.)
"""

from __future__ import annotations

import copyreg
import os
import pickle
import random
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from schemas.errors import CheckpointCorruptError, UnsafePickleError
from services.checkpoints.state.pickle_scan import DEFAULT_LIMITS, PickleLimits
from services.checkpoints.state.safe_pickle import safe_loads

PROTO4 = b"\x80\x04"
PROTO5 = b"\x80\x05"


def u(text: str) -> bytes:
    """BINUNICODE: push a str."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def sg(module: str, name: str) -> bytes:
    """STACK_GLOBAL: push the object ``module.name``."""
    return u(module) + u(name) + b"\x93"


def call(func: bytes, *args: bytes) -> bytes:
    """``func(*args)`` with MARK ... TUPLE and REDUCE."""
    return func + b"(" + b"".join(args) + b"tR"


def refused(data: bytes, **kwargs: object) -> UnsafePickleError:
    with pytest.raises(UnsafePickleError) as info:
        safe_loads(data, source="evil.pkl", **kwargs)  # type: ignore[arg-type]
    assert info.value.context["path"] == "evil.pkl"
    return info.value


class _Reduce:
    """Pickles as ``func(*args)`` (for payloads whose inner parts the pickler writes)."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.func, self.args


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "the hostile pickle ran code"


# --- code execution through every opcode that imports ------------------------------------


def test_os_system_through_every_importing_opcode_is_refused(marker: Path) -> None:
    cmd = f"touch {marker}"
    for data in (
        f"cos\nsystem\n(V{cmd}\ntR.".encode(),  # GLOBAL + REDUCE
        PROTO4 + call(sg("os", "system"), u(cmd)) + b".",  # STACK_GLOBAL
        f"(V{cmd}\nios\nsystem\n.".encode(),  # INST
        f"(cos\nsystem\nV{cmd}\no.".encode(),  # OBJ
        PROTO4 + sg("posix", "system") + u(cmd) + b"\x85R.",
    ):
        error = refused(data)
        assert "system" in str(error)


@pytest.mark.parametrize(
    "name",
    ["eval", "exec", "getattr", "__import__", "open", "compile", "setattr", "globals", "type"],
)
def test_builtins_that_act_are_refused(name: str, marker: Path) -> None:
    refused(PROTO4 + call(sg("builtins", name), u(f"__import__('os').system('touch {marker}')")))


# --- methods reached through allowed classes ------------------------------------------------


@pytest.mark.parametrize("method", ["tofile", "dump"])
def test_numpy_method_descriptors_cannot_write_files(method: str, marker: Path) -> None:
    data = pickle.dumps(_Reduce(getattr(np.ndarray, method), np.arange(3.0), str(marker)), 4)
    refused(data)


def test_bound_method_of_a_river_io_class_cannot_delete_files(tmp_path: Path) -> None:
    from river.stream import Cache

    keep = tmp_path / "keep.river_cache.pkl"
    keep.write_bytes(b"precious")
    cache = Cache(directory=str(tmp_path))
    assert "keep" in cache.keys
    refused(pickle.dumps(_Reduce(cache.clear_all), 4))
    assert keep.read_bytes() == b"precious"


def test_getattr_only_gives_the_listed_bound_methods() -> None:
    from river import linear_model

    for obj, name in (
        (linear_model.LogisticRegression, "__init__"),
        (linear_model.LogisticRegression(), "learn_one"),
        (random.Random(1), "seed"),
    ):
        error = refused(pickle.dumps(_Reduce(getattr, obj, name), 4))
        assert "getattr outside the allow-list" in str(error)


# --- names: dotted, I/O-doing river classes ---------------------------------------------------


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("river.compose.pipeline", "Pipeline.__init__"),
        ("river.compose.pipeline", "Pipeline.learn_one"),
        ("numpy", "ndarray.tofile"),
        ("river.datasets.base", "os.system"),
        ("river.stream.cache", "Cache.clear_all"),
        ("river.stream.cache", "Cache"),
        ("river.stream.iter_csv", "iter_csv"),
        ("river.stream.iter_arff", "iter_arff"),
        ("river.stream.iter_libsvm", "iter_libsvm"),
        ("river.stream.twitch_chat_stream", "TwitchChatStream"),
        ("river.stream.tweet_stream", "TwitterLiveStream"),
        ("river.datasets.base", "FileDataset"),
        ("river.datasets.base", "RemoteDataset"),
        ("river.datasets.phishing", "Phishing"),
        ("river.compose.func", "FuncTransformer"),
        ("river.evaluate.progressive_validation", "progressive_val_score"),
        ("numpy", "load"),
        ("numpy.lib.npyio", "load"),
    ],
)
def test_names_outside_the_exact_list_are_refused_before_import(module: str, name: str) -> None:
    error = refused(PROTO4 + sg(module, name) + b"\x85.")
    assert error.context["name"] == f"{module}.{name}"


def test_river_io_class_is_not_instantiated_by_any_opcode(tmp_path: Path) -> None:
    for data in (
        PROTO4 + sg("river.stream.cache", "Cache") + b")\x81.",  # NEWOBJ
        PROTO4 + call(sg("river.stream.cache", "Cache"), u(str(tmp_path / "c"))) + b".",
        f"(V{tmp_path / 'c'}\niriver.stream.cache\nCache\n.".encode(),  # INST
    ):
        refused(data)
    assert not (tmp_path / "c").exists()


# --- nested reducers ---------------------------------------------------------------------------


def test_nested_reducers_cannot_reach_what_they_wrap(tmp_path: Path, marker: Path) -> None:
    partial = sg("functools", "partial")
    reconstructor = sg("copyreg", "_reconstructor")
    for data in (
        PROTO4 + call(call(partial, sg("os", "system"), u(f"touch {marker}"))) + b".",
        PROTO4 + call(call(partial, sg("river.stream.cache", "Cache"), u(str(tmp_path)))) + b".",
        # partial only ever wraps a listed *class*, not a listed reconstruct function
        PROTO4 + call(partial, sg("numpy._core.numeric", "_frombuffer")) + b".",
        PROTO4
        + call(reconstructor, sg("river.stream.cache", "Cache"), sg("builtins", "object"), b"N")
        + b".",
        PROTO4
        + call(reconstructor, sg("collections", "OrderedDict"), sg("subprocess", "Popen"), b"N")
        + b".",
    ):
        refused(data)


def test_only_listed_callables_are_called() -> None:
    # partial(OrderedDict) is allowed data (a defaultdict factory), but OBJ and REDUCE
    # must not call it: only listed constructors and reconstruct functions are called.
    made = call(sg("functools", "partial"), sg("collections", "OrderedDict"))
    refused(PROTO4 + b"(" + made + b"o.")
    refused(PROTO4 + made + b")R.")
    # A listed river class is created by NEWOBJ (no __init__), never called with
    # arguments the pickle chose.
    logreg = sg("river.linear_model.log_reg", "LogisticRegression")
    refused(PROTO4 + call(logreg, b"K\x05") + b".")
    # numpy's RandomState ctor calls its second argument: only with a listed callable.
    # Here a river initializer would allocate 8 TiB (MemoryError escaped on main).
    zeros = sg("river.optim.initializers", "Zeros") + b")\x81}" + u("value") + b"G" + bytes(8)
    zeros += b"sb"
    ctor = sg("numpy.random._pickle", "__randomstate_ctor")
    error = refused(PROTO4 + call(ctor, b"\x8a\x06" + (2**40).to_bytes(6, "little"), zeros) + b".")
    assert "Zeros" in str(error)


def test_build_cannot_patch_a_class() -> None:
    from river.drift import ADWIN

    before = ADWIN.__dict__.get("update")
    data = (
        PROTO4
        + sg("river.drift.adwin", "ADWIN")
        + b"N}"
        + u("update")
        + sg("builtins", "float")
        + b"s\x86b."
    )
    try:
        refused(data)
    finally:
        if ADWIN.__dict__.get("update") is not before:  # main patched it: put it back
            ADWIN.update = before  # type: ignore[method-assign]
    assert ADWIN.__dict__.get("update") is before


# --- opcodes that reach outside the pickle -----------------------------------------------------


@pytest.fixture
def extensions() -> Iterator[dict[str, bytes]]:
    """EXT1/2/4 codes registered for allowed classes (copyreg's registry is global)."""
    codes = {"EXT1": 0xF1, "EXT2": 0xF1F2, "EXT4": 0x7FFFFFF1}
    names = dict(zip(codes, ("OrderedDict", "Counter", "deque"), strict=True))
    for opcode, code in codes.items():
        copyreg.add_extension("collections", names[opcode], code)
    try:
        yield {
            "EXT1": b"\x82" + struct.pack("<B", codes["EXT1"]),
            "EXT2": b"\x83" + struct.pack("<H", codes["EXT2"]),
            "EXT4": b"\x84" + struct.pack("<i", codes["EXT4"]),
        }
    finally:
        for opcode, code in codes.items():
            copyreg.remove_extension("collections", names[opcode], code)


def test_extension_registry_opcodes_are_refused(extensions: dict[str, bytes]) -> None:
    for opcode, data in extensions.items():
        error = refused(b"\x80\x02" + data + b")R.")
        assert opcode in str(error)


def test_persistent_ids_are_refused() -> None:
    refused(b"Pabc\n.")
    refused(b"\x80\x02" + u("abc") + b"Q.")


# --- bounds: sizes, memo, protocol, depth --------------------------------------------------------


@pytest.mark.parametrize(
    "opcode",
    [b"\x8e", b"\x8d", b"\x96", b"\x95"],
    ids=["BINBYTES8", "BINUNICODE8", "BYTEARRAY8", "FRAME"],
)
def test_lengths_claiming_more_than_the_input_are_refused(opcode: bytes) -> None:
    refused(PROTO5 + opcode + struct.pack("<Q", 2**50) + b"abc.")


def test_huge_memo_index_is_refused() -> None:
    refused(PROTO4 + b"N" + b"r" + struct.pack("<I", 2**31 - 1) + b".")


def test_unknown_protocol_is_refused() -> None:
    error = refused(b"\x80\x06N.")
    assert "protocol 6" in str(error)


def test_input_over_the_size_cap_is_refused() -> None:
    assert DEFAULT_LIMITS.max_bytes == 256 * 1024 * 1024
    data = pickle.dumps(list(range(1000)), 5)
    assert safe_loads(data) == list(range(1000))
    error = refused(data, limits=PickleLimits(max_bytes=len(data) - 1))
    assert "exceeds" in str(error)


def test_too_many_opcodes_are_refused() -> None:
    data = pickle.dumps([1.5] * 50, 5)
    refused(data, limits=PickleLimits(max_opcodes=20))


def _in_subprocess(data: bytes) -> subprocess.CompletedProcess[str]:
    """Load ``data`` in a child interpreter (a crash must not take the test run with it)."""
    code = (
        "import sys\n"
        "from services.checkpoints.state.safe_pickle import safe_loads\n"
        "try:\n"
        "    safe_loads(sys.stdin.buffer.read())\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__)\n"
        "else:\n"
        "    print('loaded')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    return subprocess.run(
        [sys.executable, "-c", code], input=data.decode("latin-1"), capture_output=True,
        text=True, encoding="latin-1", env=env, timeout=240, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    "data",
    [
        # 300k nested tuples as a dict key: hashing them recurses in C (SIGSEGV on main)
        PROTO5 + b"}" + b")" + b"\x85" * 300_000 + b"Ns.",
        # 100k nested lists via MARK/LIST (protocol 0)
        b"(" * 100_000 + b"l" * 100_000 + b".",
        # 100k nested lists via EMPTY_LIST/APPEND
        PROTO4 + b"]" * 100_000 + b"a" * 99_999 + b".",
    ],
    ids=["tuple-key", "mark-list", "append-list"],
)
def test_deep_nesting_is_refused_without_crashing(data: bytes) -> None:
    done = _in_subprocess(data)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "UnsafePickleError"


# --- failures that are not Exception ----------------------------------------------------------


def test_rust_panic_in_a_listed_class_becomes_unsafe_pickle_error() -> None:
    rust = sg("river._river_rust.drift", "AdaptiveWindowing")
    args = b"(G" + struct.pack(">d", 0.002) + b"K\x20K\x05K\x05K\x0at"
    data = PROTO4 + rust + args + b"\x81" + b"C\x00" + b"b."  # NEWOBJ, BUILD(b"")
    error = refused(data)
    assert "PanicException" in str(error)
    assert isinstance(error, CheckpointCorruptError)


@pytest.mark.parametrize(
    "data",
    [b"not a pickle", b"", PROTO5, pickle.dumps({"a": [1, 2, 3]}, 5)[:-3], b"\x80\x05\xff."],
    ids=["text", "empty", "proto-only", "truncated", "unknown-opcode"],
)
def test_malformed_bytes_are_one_error(data: bytes) -> None:
    refused(data)


def test_keyboard_interrupt_still_propagates(monkeypatch: pytest.MonkeyPatch) -> None:
    import services.checkpoints.state.safe_pickle as sp

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(sp, "scan", interrupted)
    with pytest.raises(KeyboardInterrupt):
        safe_loads(pickle.dumps(1))
