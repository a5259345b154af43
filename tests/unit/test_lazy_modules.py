"""A deferred module imports like any other and runs its code once, at first use.

The package under test is written to a temporary directory with a fresh name
per test (the deferring finder is process-wide); each module records its
runs in ``RUNS`` of a module that is not deferred. The river checks run in a
fresh interpreter, as a worker starts.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from services.lazy_modules import defer, is_deferred, loaded


@pytest.fixture
def package(tmp_path: Path) -> Iterator[str]:
    """A package ``<name>`` with modules ``sub`` (a package with ``leaf``),
    ``slow`` (waits for an event in ``runs``) and ``broken`` (raises)."""
    name = f"deferred_{uuid.uuid4().hex[:8]}"
    root = tmp_path / name
    (root / "sub").mkdir(parents=True)
    runs = f"{name}_runs"
    (tmp_path / f"{runs}.py").write_text("import threading\nRUNS = []\nGO = threading.Event()\n")
    (root / "__init__.py").write_text(f"import {runs}\n{runs}.RUNS.append('{name}')\n")
    (root / "sub" / "__init__.py").write_text(
        f"import {runs}\n{runs}.RUNS.append('sub')\nVALUE = 42\n"
        "def __getattr__(attr):\n    if attr == 'DYNAMIC':\n        return 'dynamic'\n"
        "    raise AttributeError(attr)\n"
    )
    (root / "sub" / "leaf.py").write_text(f"import {runs}\n{runs}.RUNS.append('leaf')\nLEAF = 1\n")
    (root / "slow.py").write_text(
        f"import {runs}, time\n{runs}.RUNS.append('slow')\n{runs}.GO.wait(10)\nDONE = True\n"
    )
    (root / "broken.py").write_text(f"import {runs}\n{runs}.RUNS.append('broken')\n1 / 0\n")
    sys.path.insert(0, str(tmp_path))
    try:
        yield name
    finally:
        sys.path.remove(str(tmp_path))
        for mod in [m for m in sys.modules if m.startswith((name, runs))]:
            del sys.modules[mod]


def _runs(name: str) -> list[str]:
    runs: list[str] = importlib.import_module(f"{name}_runs").RUNS
    return runs


def test_importing_a_deferred_module_binds_it_and_runs_nothing(package: str) -> None:
    defer([f"{package}.sub"])
    parent = importlib.import_module(package)
    sub = importlib.import_module(f"{package}.sub")
    assert _runs(package) == [package]  # the parent ran, the deferred module did not
    assert parent.sub is sub is sys.modules[f"{package}.sub"]
    assert is_deferred(f"{package}.sub")
    assert sub.__name__ == f"{package}.sub"  # set by the import, without running it


def test_the_first_missing_attribute_runs_it_once_in_the_same_module(package: str) -> None:
    defer([f"{package}.sub"])
    sub = importlib.import_module(f"{package}.sub")
    assert sub.VALUE == 42
    assert sub.VALUE == 42
    assert sub.DYNAMIC == "dynamic"  # the module's own __getattr__ works
    with pytest.raises(AttributeError):
        _ = sub.MISSING
    assert _runs(package) == [package, "sub"]
    assert not is_deferred(f"{package}.sub")
    assert type(sub) is ModuleType
    assert importlib.import_module(f"{package}.sub") is sub


def test_a_submodule_imports_without_running_its_deferred_package(package: str) -> None:
    defer([f"{package}.sub"])
    leaf = importlib.import_module(f"{package}.sub.leaf")
    assert leaf.LEAF == 1
    assert _runs(package) == [package, "leaf"]
    sub = importlib.__import__(f"{package}.sub", fromlist=["VALUE"])  # from sub import VALUE
    assert sub.VALUE == 42
    assert _runs(package) == [package, "leaf", "sub"]


def test_dir_runs_it_vars_does_not_but_loaded_does(package: str) -> None:
    defer([f"{package}.sub", f"{package}.sub.leaf"])
    sub = importlib.import_module(f"{package}.sub")
    leaf = importlib.import_module(f"{package}.sub.leaf")
    assert "VALUE" not in vars(sub)
    assert "VALUE" in dir(sub)
    assert "LEAF" not in vars(leaf)
    assert vars(loaded(leaf))["LEAF"] == 1
    assert _runs(package) == [package, "sub", "leaf"]


def test_a_module_that_fails_raises_at_first_use_and_leaves_sys_modules(package: str) -> None:
    defer([f"{package}.broken"])
    broken = importlib.import_module(f"{package}.broken")
    with pytest.raises(ZeroDivisionError):
        _ = broken.anything
    assert f"{package}.broken" not in sys.modules
    again = importlib.import_module(f"{package}.broken")  # a new import tries again, as usual
    assert again is not broken
    with pytest.raises(ZeroDivisionError):
        _ = again.anything
    assert _runs(package) == [package, "broken", "broken"]


def test_a_module_already_imported_is_not_affected(package: str) -> None:
    sub = importlib.import_module(f"{package}.sub")
    defer([f"{package}.sub"])
    assert importlib.import_module(f"{package}.sub") is sub
    assert not is_deferred(f"{package}.sub")
    assert _runs(package) == [package, "sub"]


def test_threads_reading_it_at_once_run_it_once_and_all_see_it_whole(package: str) -> None:
    defer([f"{package}.slow"])
    slow = importlib.import_module(f"{package}.slow")
    seen: list[bool] = []

    def read() -> None:
        seen.append(slow.DONE)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    importlib.import_module(f"{package}_runs").GO.set()
    for t in threads:
        t.join(10)
    assert seen == [True] * 4
    assert _runs(package) == [package, "slow"]


_RIVER_PROBE = """
import sys
import services.learning
from services.lazy_modules import RIVER_UNUSED, is_deferred
import river, river.linear_model, river.metrics, river.preprocessing, river.drift
before = sorted(n for n in RIVER_UNUSED if n in sys.modules and not is_deferred(n))
assert river.proba is sys.modules["river.proba"]
assert river.drift.datasets is sys.modules["river.drift.datasets"]
from river.proba import Gaussian
detector = river.drift.KSWIN(seed=1)  # needs scipy.stats at its first update
for i in range(100):
    detector.update(i % 7)
from services.learning.factory import resolve
tree = resolve("river.tree.HoeffdingTreeClassifier")
print(before, Gaussian.__name__, tree.__name__, river.drift.datasets.AirlinePassengers.__name__)
"""


def test_river_extras_are_deferred_and_load_when_used() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _RIVER_PROBE], capture_output=True, check=True, text=True
    ).stdout
    assert out.split() == ["[]", "Gaussian", "HoeffdingTreeClassifier", "AirlinePassengers"]
