"""One-tensor files written without a joined copy, and the state digest built from their hashes."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save

from schemas.errors import CheckpointCorruptError, CheckpointError
from schemas.manifest import CheckpointManifest, FileEntry, ManifestDraft
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.state.encoding import decode_tensors, tensor_file_digest, tensor_payload
from services.checkpoints.state.state import CheckpointState, legacy_state_digest, state_digest
from services.checkpoints.state.torch_state import TorchAdapter
from services.checkpoints.state.writer import EncodeOptions, encode_save
from tests.unit.store_helpers import make_store

#: A manifest for decode errors to name.
MANIFEST = CheckpointManifest(model="m", version="m-000001", label="m", created_ts=0)
TENSORS = [
    torch.arange(6, dtype=torch.float32).reshape(2, 3),
    torch.zeros(0, 4),
    torch.tensor(3.0, dtype=torch.float64),
    torch.ones(3, dtype=torch.bfloat16),
    torch.randn(130, 7).to(torch.float16),
    torch.tensor([True, False, True]),
    torch.arange(-5, 5, dtype=torch.int8),
    torch.arange(12, dtype=torch.int64).reshape(3, 4)[:, 1:],  # not contiguous
]


@pytest.mark.parametrize("tensor", TENSORS, ids=lambda t: f"{t.dtype}{list(t.shape)}")
def test_payload_is_byte_for_byte_the_safetensors_file_and_decodes_in_place(
    tensor: torch.Tensor,
) -> None:
    joined = b"".join(bytes(p) for p in tensor_payload(tensor))
    assert joined == st_save({"value": tensor.contiguous()})
    assert tensor_file_digest(tensor) == hashlib.sha256(joined).hexdigest()
    decoded = decode_tensors(bytearray(joined), name="t", manifest=MANIFEST)["value"]
    assert decoded.dtype == tensor.dtype
    assert torch.equal(decoded, tensor)


def test_manifest_hashes_are_those_of_the_bytes_written_from_buffers(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    tensor = torch.randn(300, 5)
    m = store.commit("m", {"t.safetensors": tensor_payload(tensor)}, ManifestDraft())
    on_disk = (tmp_path / "hot" / "m" / m.version / "t.safetensors").read_bytes()
    entry = m.file("t.safetensors")
    assert entry is not None
    assert (entry.sha256, entry.size) == (hashlib.sha256(on_disk).hexdigest(), len(on_disk))


def test_finish_sees_the_store_hashes_and_cannot_make_the_manifest_lie(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    seen: dict[str, FileEntry] = {}

    def finish(draft: ManifestDraft, written: Mapping[str, FileEntry]) -> ManifestDraft:
        seen.update(written)
        return draft.model_copy(update={"state_digest": "caller"})

    m = store.commit("m", {"a.bin": b"abc"}, ManifestDraft(), finish=finish)
    assert seen["a.bin"].sha256 == hashlib.sha256(b"abc").hexdigest()
    assert m.state_digest == "caller"
    # A finish that claims other bytes for a written file is refused; nothing is committed.
    fake = FileEntry(name="a.bin", sha256="0" * 64, size=3, ref_version=m.version)

    def lie(draft: ManifestDraft, written: Mapping[str, FileEntry]) -> ManifestDraft:
        return draft.model_copy(update={"file_refs": {"a.bin": fake}})

    with pytest.raises(CheckpointError):
        store.commit("m", {"a.bin": b"xyz"}, ManifestDraft(), finish=lie)
    assert [x.version for x in store.manifests("m")] == [m.version]


def test_state_digest_does_not_depend_on_how_the_state_was_stored(tmp_path: Path) -> None:
    torch.manual_seed(0)
    emb = torch.nn.Embedding(500, 8, sparse=True)
    opt: torch.optim.Optimizer = torch.optim.SparseAdam(list(emb.parameters()))
    adapter = TorchAdapter(emb, opt)
    deltas = Checkpointer(make_store(tmp_path / "a"), CheckpointerConfig(async_saves=False))
    fulls = Checkpointer(
        make_store(tmp_path / "b"), CheckpointerConfig(async_saves=False, delta=False)
    )
    for step in range(3):
        emb(torch.randint(0, 500, (5,))).sum().backward()
        opt.step()
        opt.zero_grad()
        a = deltas.save("e", adapter, step=step).result()
        b = fulls.save("e", adapter, step=step).result()
        assert a.state_digest == b.state_digest == state_digest(adapter.capture())
    assert (a.kind, b.kind) == ("delta", "full")
    assert a.state_digest is not None
    assert a.state_digest.startswith("tf2:")


def test_a_checkpoint_with_a_legacy_digest_is_still_checked(tmp_path: Path) -> None:
    store = make_store(tmp_path)
    state = CheckpointState(groups={"model": {"w": torch.ones(3, 2)}})
    files = encode_save(state, parent=None, options=EncodeOptions()).files
    good = store.commit("m", files, ManifestDraft(state_digest=legacy_state_digest(state)))
    bad = store.commit(
        "m", files, ManifestDraft(state_digest=legacy_state_digest(CheckpointState()))
    )
    loaded = Checkpointer(store).load("m", good.version).state
    assert torch.equal(loaded.groups["model"]["w"], torch.ones(3, 2))
    with pytest.raises(CheckpointCorruptError, match="state digest"):
        Checkpointer(store).load("m", bad.version)
