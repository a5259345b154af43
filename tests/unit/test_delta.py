"""Differential saves: few bytes for sparse updates, exact reconstruction, bounded chains."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from schemas.errors import CheckpointCorruptError
from schemas.manifest import ManifestDraft
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.state.delta import apply_rows, diff_tensor
from services.checkpoints.state.reader import load_state
from services.checkpoints.state.state import CheckpointState, state_digest
from services.checkpoints.state.torch_state import TorchAdapter
from services.checkpoints.state.writer import EncodeOptions, encode_save
from services.checkpoints.store import CheckpointStore

ROWS, DIM = 2_000, 16


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(StoreConfig(root=tmp_path / "store", fsync=False, keep_latest=100))


class EmbeddingModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(ROWS, DIM, sparse=True)
        self.head = torch.nn.Linear(DIM, 1)


def sparse_step(model: EmbeddingModel, sparse_opt: torch.optim.Optimizer, rows: int) -> None:
    idx = torch.randint(0, ROWS, (rows,))
    model.emb(idx).sum().backward()
    sparse_opt.step()
    sparse_opt.zero_grad()


def setup(seed: int = 0) -> tuple[EmbeddingModel, torch.optim.Optimizer, TorchAdapter]:
    torch.manual_seed(seed)
    model = EmbeddingModel()
    opt = torch.optim.SparseAdam(list(model.emb.parameters()))
    return model, opt, TorchAdapter(model, opt)


def test_every_delta_in_a_chain_reconstructs_its_exact_state(store: CheckpointStore) -> None:
    model, opt, adapter = setup()
    checkpointer = Checkpointer(store, CheckpointerConfig(full_every=3))
    expected: dict[str, str] = {}
    for step in range(9):
        sparse_step(model, opt, rows=20)
        manifest = checkpointer.save("emb", adapter, step=step).result()
        expected[manifest.version] = state_digest(adapter.capture())
    checkpointer.close()
    kinds = [m.kind for m in store.manifests("emb")]
    assert kinds == ["full", "delta", "delta", "delta"] * 2 + ["full"]
    for version, digest in expected.items():
        state, manifest, _ = load_state(store, "emb", version)
        assert state_digest(state) == digest == manifest.state_digest
    newest = Checkpointer(store).load("emb").state
    assert torch.equal(newest.groups["model"]["emb.weight"], model.emb.weight)


def test_sparse_update_writes_a_small_fraction_and_references_unchanged_tensors(
    store: CheckpointStore,
) -> None:
    model, opt, adapter = setup()
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    sparse_step(model, opt, rows=ROWS // 100)  # optimizer state exists from here on
    checkpointer.save("emb", adapter, step=0)
    full_bytes = checkpointer.last_bytes_written
    sparse_step(model, opt, rows=ROWS // 100)
    manifest = checkpointer.save("emb", adapter, step=1).result()
    assert manifest.kind == "delta"
    assert checkpointer.last_bytes_written < full_bytes / 10
    head = next(f for f in manifest.files if "head.weight" in f.name and "tensors/" in f.name)
    assert head.ref_version == store.manifests("emb")[0].version


def test_a_restarted_process_continues_the_chain_from_the_store(store: CheckpointStore) -> None:
    model, opt, adapter = setup()
    Checkpointer(store, CheckpointerConfig(async_saves=False)).save("emb", adapter, step=0)
    sparse_step(model, opt, rows=10)
    restarted = Checkpointer(store, CheckpointerConfig(async_saves=False))
    manifest = restarted.save("emb", adapter, step=1).result()
    assert manifest.kind == "delta"
    assert manifest.parent_version == store.manifests("emb")[0].version
    assert torch.equal(restarted.load("emb").state.groups["model"]["emb.weight"], model.emb.weight)


def own_bytes(store: CheckpointStore, model: str, version: str) -> int:
    """Bytes a checkpoint wrote itself (referenced files and the index excluded)."""
    manifest = store.open(model, version).manifest
    return sum(
        f.size for f in manifest.files if f.ref_version is None and f.name != "state/index.json"
    )


def test_a_full_checkpoint_follows_once_the_chain_wrote_its_share_of_the_base(
    store: CheckpointStore,
) -> None:
    model, opt, adapter = setup()
    fraction = 0.25
    config = CheckpointerConfig(async_saves=False, full_every=64, full_after_fraction=fraction)
    checkpointer = Checkpointer(store, config)
    for step in range(12):
        sparse_step(model, opt, rows=ROWS // 10)  # ~10% of the rows per save
        checkpointer.save("emb", adapter, step=step)
    manifests = store.manifests("emb")
    kinds = [m.kind for m in manifests]
    assert kinds.count("full") >= 3, kinds  # the byte rule, not the cap of 64, ended chains
    written = 0
    base = 0
    for manifest, kind in zip(manifests, kinds, strict=True):
        if kind == "full":
            if base:  # a full checkpoint comes only once the chain wrote its share
                assert written >= fraction * base, (kinds, written, base)
            base, written = own_bytes(store, "emb", manifest.version), 0
            continue
        assert written < fraction * base, (kinds, written, base)  # this delta was allowed
        written += own_bytes(store, "emb", manifest.version)
    for manifest in manifests:  # and every one of them loads to its exact state
        load_state(store, "emb", manifest.version)


def test_a_restarted_process_continues_the_chain_s_byte_count(
    store: CheckpointStore, tmp_path: Path
) -> None:
    model, opt, adapter = setup()
    config = CheckpointerConfig(async_saves=False, full_after_fraction=0.25)
    first = Checkpointer(store, config)
    for step in range(2):
        sparse_step(model, opt, rows=ROWS // 10)
        first.save("emb", adapter, step=step)
    kinds = []
    for step in range(2, 6):  # a fresh process per save: the count comes from the store
        sparse_step(model, opt, rows=ROWS // 10)
        kinds.append(Checkpointer(store, config).save("emb", adapter, step=step).result().kind)
    other = CheckpointStore(StoreConfig(root=tmp_path / "other", fsync=False, keep_latest=100))
    uninterrupted = Checkpointer(other, config)
    model_b, opt_b, adapter_b = setup()  # the same seed: the same updates
    expected = []
    for step in range(6):
        sparse_step(model_b, opt_b, rows=ROWS // 10)
        expected.append(uninterrupted.save("emb", adapter_b, step=step).result().kind)
    assert kinds == expected[2:]
    assert "full" in kinds


def test_delta_disabled_writes_full_checkpoints_with_lineage(store: CheckpointStore) -> None:
    model, opt, adapter = setup()
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False, delta=False))
    first = checkpointer.save("emb", adapter, step=0).result()
    sparse_step(model, opt, rows=10)
    second = checkpointer.save("emb", adapter, step=1).result()
    assert (second.kind, second.parent_version) == ("full", first.version)


def test_state_digest_mismatch_is_refused_as_corrupt(store: CheckpointStore) -> None:
    state = CheckpointState(groups={"model": {"w": torch.ones(3, 2)}})
    encoded = encode_save(state, parent=None, options=EncodeOptions())
    draft = ManifestDraft(state_digest="0" * 64, kind="full")
    manifest = store.commit("emb", encoded.files, draft)
    with pytest.raises(CheckpointCorruptError, match="state digest") as info:
        Checkpointer(store).load("emb", manifest.version)
    assert info.value.context["version"] == manifest.version


def test_diff_is_bitwise_rows_or_full() -> None:
    base = torch.zeros(100, 4)
    same = diff_tensor(base.clone(), base, max_fraction=0.5)
    assert same.mode == "same"
    few = base.clone()
    few[[3, 70]] = 1.0
    rows = diff_tensor(few, base, max_fraction=0.5)
    assert rows.mode == "rows"
    assert rows.indices is not None
    assert rows.indices.tolist() == [3, 70]
    assert diff_tensor(base + 1, base, max_fraction=0.5).mode == "full"
    negative_zero = base.clone()
    negative_zero[5, 0] = -0.0  # equal as floats, different bits
    assert diff_tensor(negative_zero, base, max_fraction=0.5).mode == "rows"
    assert diff_tensor(torch.zeros(100, 5), base, max_fraction=0.5).mode == "full"


def test_dense_change_of_a_large_tensor_is_stored_full_and_a_sparse_one_as_rows() -> None:
    base = torch.zeros(1_000, 8)
    assert diff_tensor(base + 1, base, max_fraction=0.5).mode == "full"
    one = base.clone()
    one[999, 7] = 2.0  # a row the sample does not look at is still found
    change = diff_tensor(one, base, max_fraction=0.5)
    assert change.mode == "rows"
    assert change.indices is not None
    assert change.indices.tolist() == [999]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int8, torch.float64])
@pytest.mark.parametrize("shape", [(50, 3), (50,), (50, 2, 2)])
def test_applied_rows_are_exactly_those_index_copy_writes(
    dtype: torch.dtype, shape: tuple[int, ...]
) -> None:
    torch.manual_seed(1)
    base = (torch.randn(shape) * 50).to(dtype)
    indices = torch.tensor([0, 7, 49, 13])
    values = (torch.randn((4, *shape[1:])) * 50).to(dtype)
    expected = base.clone().index_copy_(0, indices, values)
    out = apply_rows(base, indices, values)
    assert out is base
    assert torch.equal(base.view(torch.uint8), expected.view(torch.uint8))


def test_a_damaged_base_of_a_chain_is_named_with_both_hashes_on_load(
    store: CheckpointStore,
) -> None:
    model, opt, adapter = setup()
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    for step in range(3):
        sparse_step(model, opt, rows=20)
        checkpointer.save("emb", adapter, step=step)
    base, *_, newest = store.manifests("emb")
    assert (newest.kind, newest.base_version) == ("delta", base.version)
    entry = base.file("tensors/model/emb.weight.safetensors")
    assert entry is not None
    path = store.config.root / "emb" / base.version / entry.name
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last row: one no delta rewrote (20 of 2,000 rows changed)
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError) as info:
        Checkpointer(store).load("emb", newest.version)
    ctx = info.value.context
    assert ctx["path"] == str(path)
    assert ctx["expected_sha256"] == entry.sha256
    assert ctx["actual_sha256"] == hashlib.sha256(data).hexdigest()
