"""Async saves: consistent snapshots, back-pressure, loud failures, flush on close/SIGTERM."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from schemas.errors import CheckpointError
from schemas.manifest import CheckpointManifest, ManifestDraft
from services.checkpoints.async_saver import AsyncSaver
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.state.torch_state import TorchAdapter
from services.checkpoints.storage import Payload
from services.checkpoints.store import CheckpointStore

REPO = Path(__file__).resolve().parents[2]


class GatedStore(CheckpointStore):
    """A real store whose commits wait for ``gate`` and can be told to fail."""

    def __init__(self, root: Path) -> None:
        super().__init__(StoreConfig(root=root, fsync=False, keep_latest=100))
        self.gate = threading.Event()
        self.gate.set()
        self.fail_next = False

    def commit(
        self, model: str, files: Mapping[str, Payload], draft: ManifestDraft, **kw: Any
    ) -> CheckpointManifest:
        self.gate.wait(timeout=30)
        if self.fail_next:
            self.fail_next = False
            raise OSError("disk full")
        return super().commit(model, files, draft, **kw)


@pytest.fixture
def store(tmp_path: Path) -> GatedStore:
    return GatedStore(tmp_path / "store")


def test_save_returns_before_commit_and_captures_the_state_of_that_moment(
    store: GatedStore,
) -> None:
    module = torch.nn.Linear(8, 8)
    before = module.weight.detach().clone()
    store.gate.clear()
    with Checkpointer(store, CheckpointerConfig()) as checkpointer:
        future = checkpointer.save("net", TorchAdapter(module), step=1)
        assert not future.done()
        with torch.no_grad():
            module.weight.add_(1.0)  # training goes on while the save is pending
        store.gate.set()
        manifest = future.result(timeout=30)
    saved = Checkpointer(store).load("net", manifest.version).state.groups["model"]["weight"]
    assert torch.equal(saved, before)


def test_next_save_blocks_while_in_flight_saves_are_at_the_bound(store: GatedStore) -> None:
    adapter = TorchAdapter(torch.nn.Linear(4, 4))
    store.gate.clear()
    checkpointer = Checkpointer(store, CheckpointerConfig(max_in_flight=1))
    first = checkpointer.save("net", adapter, step=1)
    second: list[object] = []
    blocked = threading.Thread(
        target=lambda: second.append(checkpointer.save("net", adapter, step=2))
    )
    blocked.start()
    blocked.join(timeout=0.3)
    assert blocked.is_alive(), "a second save must wait for the first to be committed"
    store.gate.set()
    blocked.join(timeout=30)
    checkpointer.close()
    assert first.result().step == 1
    assert [m.step for m in store.manifests("net")] == [1, 2]


def test_failed_save_raises_on_next_save_and_is_logged_with_context(
    store: GatedStore, caplog: pytest.LogCaptureFixture
) -> None:
    adapter = TorchAdapter(torch.nn.Linear(4, 4))
    checkpointer = Checkpointer(store, CheckpointerConfig())
    store.fail_next = True
    with caplog.at_level(logging.ERROR):
        failed = checkpointer.save("net", adapter, step=3)
        assert isinstance(failed.exception(timeout=30), OSError)
        with pytest.raises(CheckpointError, match="disk full") as info:
            checkpointer.save("net", adapter, step=4)
    assert info.value.context["model"] == "net"
    assert info.value.context["step"] == 3
    assert "model=net" in caplog.text
    assert "step=3" in caplog.text
    checkpointer.save("net", adapter, step=5)  # reported once; saving goes on
    checkpointer.close()
    assert [m.step for m in store.manifests("net")] == [5]


def test_failed_save_raises_on_wait(store: GatedStore) -> None:
    checkpointer = Checkpointer(store, CheckpointerConfig())
    store.fail_next = True
    checkpointer.save("net", TorchAdapter(torch.nn.Linear(4, 4)), step=1)
    with pytest.raises(CheckpointError, match="disk full"):
        checkpointer.wait()
    checkpointer.close()


def test_close_flushes_every_pending_save(store: GatedStore) -> None:
    adapter = TorchAdapter(torch.nn.Linear(4, 4))
    checkpointer = Checkpointer(store, CheckpointerConfig(max_in_flight=2))
    futures = [checkpointer.save("net", adapter, step=s) for s in range(4)]
    checkpointer.close()
    assert all(f.done() for f in futures)
    assert [m.step for m in store.manifests("net")] == [0, 1, 2, 3]
    with pytest.raises(CheckpointError, match="closed"):
        checkpointer.save("net", adapter, step=9)


CHILD = textwrap.dedent(
    """
    import sys, time
    import torch
    from services.checkpoints.async_saver import install_sigterm_flush
    from services.checkpoints.checkpointer import Checkpointer
    from services.checkpoints.config import StoreConfig
    from services.checkpoints.state.torch_state import TorchAdapter
    from services.checkpoints.store import CheckpointStore

    class SlowStore(CheckpointStore):
        def commit(self, model, files, draft, **kw):
            print("committing", flush=True)
            time.sleep(1.0)
            return super().commit(model, files, draft, **kw)

    checkpointer = Checkpointer(SlowStore(StoreConfig(root=sys.argv[1])))
    install_sigterm_flush(checkpointer)
    checkpointer.save("net", TorchAdapter(torch.nn.Linear(64, 64)), step=7, trigger="interval")
    while True:
        time.sleep(0.05)
    """
)


def test_sigterm_mid_save_flushes_the_checkpoint_then_exits(tmp_path: Path) -> None:
    root = tmp_path / "store"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "committing"
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=60) == -signal.SIGTERM
    finally:
        child.kill()
    manifest = CheckpointStore(StoreConfig(root=root)).latest("net")
    assert manifest is not None
    assert (manifest.step, manifest.trigger) == (7, "interval")


def test_a_saver_admits_by_count_and_snapshot_bytes_and_can_decline_without_preparing() -> None:
    gate = threading.Event()
    saver = AsyncSaver(max_in_flight=3, max_pending_bytes=100)
    prepared: list[int] = []

    def job(n: int) -> Callable[[], Callable[[], int]]:
        def prepare() -> Callable[[], int]:
            prepared.append(n)
            return lambda: int(gate.wait(timeout=30)) and n

        return prepare

    first = saver.submit(job(1), nbytes=60, block=False)
    assert first is not None  # nothing pending: always admitted, whatever its size
    assert saver.submit(job(2), nbytes=60, block=False) is None  # 120 > 100 bytes
    assert saver.submit(job(3), nbytes=40, block=False) is not None
    assert saver.submit(job(4), nbytes=0, block=False) is not None
    assert saver.submit(job(5), nbytes=0, block=False) is None  # 3 in flight
    assert prepared == [1, 3, 4]  # a declined job took no snapshot
    assert (saver.in_flight, saver.admits(0)) == (3, False)
    gate.set()
    saver.close()
    assert first.result() == 1


def test_a_handled_failure_is_left_to_its_future(caplog: pytest.LogCaptureFixture) -> None:
    saver = AsyncSaver()

    def boom() -> Callable[[], None]:
        def fail() -> None:
            raise OSError("disk full")

        return fail

    with caplog.at_level(logging.ERROR):
        failed = saver.submit(boom, handled=True, model="net", step=1)
        assert failed is not None
        assert isinstance(failed.exception(timeout=30), OSError)
    assert "model=net" in caplog.text  # logged all the same
    later = saver.submit(lambda: lambda: 2, model="net", step=2)  # not raised again here
    assert later is not None
    assert later.result(timeout=30) == 2
    saver.close()
