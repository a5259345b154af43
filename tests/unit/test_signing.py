"""Signed checkpoints: no state file of a checkpoint a trusted key did not sign is ever read.

Guards issue 8, item 2 ("authenticity before deserialization"): on main a
crafted state file with its sha256 and size updated in the manifest is
loaded, and ``checkpoints verify`` reports no problem. Here every commit is
signed with Ed25519, every loader verifies the manifest (signature, trusted
key, model and version of the path opened) before it reads a single state
file, unsigned stores stay listed and are never quarantined, and an operator
adopts them once with ``driftloop checkpoints sign --adopt``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch
from river import linear_model
from typer.testing import CliRunner

from schemas.errors import CheckpointSignatureError, ConfigError
from schemas.manifest import CheckpointManifest, decode_manifest, signing_payload
from services.checkpoints.checkpointer import Checkpointer, CheckpointerConfig
from services.checkpoints.config import StoreConfig
from services.checkpoints.signing import (
    Signer,
    TrustedKeys,
    ensure_default_key,
    generate_key_file,
    public_key_b64,
    public_key_pem,
    raw_public_bytes,
)
from services.checkpoints.state.encoding import blob_file
from services.checkpoints.state.river_state import RIVER_BLOB, RiverAdapter
from services.checkpoints.state.torch_state import TorchAdapter
from services.checkpoints.storage import CheckpointStorage
from services.checkpoints.store import CheckpointStore
from services.cli import app
from tests.unit.store_helpers import save

runner = CliRunner()


def config(tmp: Path, **settings: Any) -> StoreConfig:
    settings.setdefault("fsync", False)
    settings.setdefault("keep_latest", 1000)
    return StoreConfig(root=tmp / "hot", **settings)


def key_file(tmp: Path, name: str) -> tuple[Path, Signer]:
    path = tmp / "keys" / f"{name}.pem"
    return path, generate_key_file(path)


class CountingStorage:
    """A storage that counts reads of state files (manifests are not state)."""

    def __init__(self, inner: CheckpointStorage) -> None:
        self.inner = inner
        self.state_reads: list[str] = []

    def read_file(self, model: str, version: str, name: str) -> bytes:
        self.state_reads.append(f"{version}/{name}")
        return self.inner.read_file(model, version, name)

    def read_buffer(self, model: str, version: str, name: str) -> bytearray:
        self.state_reads.append(f"{version}/{name}")
        return self.inner.read_buffer(model, version, name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def manifest_path(store: CheckpointStore, model: str, version: str) -> Path:
    return store.config.root / model / version / "manifest.json"


def edit_manifest(
    store: CheckpointStore,
    model: str,
    version: str,
    changes: dict[str, Any] | None = None,
    **more: Any,
) -> None:
    """Rewrite manifest.json as an outsider would: JSON edited, no key involved."""
    path = manifest_path(store, model, version)
    raw = orjson.loads(path.read_bytes())
    changes = (changes or {}) | more
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path.write_bytes(orjson.dumps(raw, option=orjson.OPT_INDENT_2))


def strip_signatures(store: CheckpointStore, model: str) -> None:
    """Make the store look like one written before signing existed (no signature key)."""
    for m in store.manifests(model):
        edit_manifest(store, model, m.version, signature=None)


# -- keys and signatures ---------------------------------------------------------------------


def test_sign_and_verify_round_trip_and_key_formats(tmp_path: Path) -> None:
    path, signer = key_file(tmp_path, "writer")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert signer.key_id == hashlib.sha256(raw_public_bytes(signer.public_key)).hexdigest()[:16]
    # The same key from PEM, from base64 of the raw private bytes, from the file.
    raw_private = signer._private.private_bytes_raw()
    for again in (
        Signer.from_file(path),
        Signer.from_text(path.read_text()),
        Signer.from_text(base64.b64encode(raw_private).decode()),
    ):
        assert again.key_id == signer.key_id
    pem = tmp_path / "writer.pub.pem"
    pem.write_bytes(public_key_pem(signer.public_key))
    for entry in (public_key_b64(signer.public_key), pem.read_text(), str(pem)):
        assert TrustedKeys.from_entries([entry]).key_ids == [signer.key_id]

    manifest = CheckpointManifest(
        model="fraud", version="fraud-000001", label="x", created_ts=1, metrics={"auc": 1}
    )
    signed = signer.sign(manifest)
    assert signed.signature is not None
    assert signed.signature.key_id == signer.key_id
    trusted = TrustedKeys([signer.public_key])
    assert trusted.verify(signed, model="fraud", version="fraud-000001") == signed
    # The payload is domain-separated and leaves the signature out.
    assert signing_payload(signed).startswith(b"driftloop-manifest-v1\n")
    assert signing_payload(signed) == signing_payload(manifest)
    changed = signed.model_copy(update={"step": 1})
    with pytest.raises(CheckpointSignatureError) as bad:
        trusted.verify(changed, model="fraud", version="fraud-000001")
    assert bad.value.reason == "bad_signature"


def test_generate_key_file_never_overwrites(tmp_path: Path) -> None:
    path, signer = key_file(tmp_path, "once")
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        generate_key_file(path)
    assert path.read_bytes() == before
    assert Signer.from_file(path).key_id == signer.key_id
    assert [p.name for p in path.parent.iterdir()] == ["once.pem"]  # no temp file left


def test_bad_key_settings_are_clear_errors_that_do_not_print_the_key(tmp_path: Path) -> None:
    secret = "not-a-key-" + "x" * 30
    with pytest.raises(ConfigError, match="DRIFTLOOP_STORE_SIGNING_KEY") as exc:
        CheckpointStore(config(tmp_path, signing_key=secret, signing_key_file=None))
    assert secret not in str(exc.value)
    assert secret not in repr(config(tmp_path, signing_key=secret, signing_key_file=None))
    with pytest.raises(ConfigError, match="trusted key"):
        CheckpointStore(config(tmp_path, trusted_keys=(str(tmp_path / "missing.pem"),)))


# -- the store -------------------------------------------------------------------------------


def test_state_and_manifest_rewritten_without_the_key_are_refused_before_any_read(
    tmp_path: Path,
) -> None:
    """The issue's "done when": a tampered river.pkl and manifest never reach the unpickler."""
    store = CheckpointStore(config(tmp_path))
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    model = linear_model.LogisticRegression()
    model.learn_one({"a": 1.0}, True)
    good = checkpointer.save("fraud", RiverAdapter({"model": model}), step=1).result()
    model.learn_one({"a": 2.0}, False)
    m = checkpointer.save("fraud", RiverAdapter({"model": model}), step=2).result()
    folder = store.config.root / "fraud" / m.version
    hostile = b"\x80\x05garbage that would crash or run in a decoder"
    (folder / blob_file(RIVER_BLOB)).write_bytes(hostile)
    raw = orjson.loads((folder / "manifest.json").read_bytes())
    (entry,) = [f for f in raw["files"] if f["name"] == blob_file(RIVER_BLOB)]
    entry.update(sha256=hashlib.sha256(hostile).hexdigest(), size=len(hostile))
    attacker = Signer.generate()
    variants = {
        "bad_signature": raw,  # the old signature kept
        "unsigned": {k: v for k, v in raw.items() if k != "signature"},
        "unknown_key": orjson.loads(
            attacker.sign(decode_manifest(orjson.dumps(raw))).model_dump_json()
        ),
    }
    for reason, forged in variants.items():
        (folder / "manifest.json").write_bytes(orjson.dumps(forged))
        fresh = CheckpointStore(config(tmp_path))
        counting = CountingStorage(fresh.hot)
        fresh.hot = counting  # type: ignore[assignment]
        with pytest.raises(CheckpointSignatureError) as exc:
            Checkpointer(fresh).load("fraud")
        assert exc.value.reason == reason
        assert exc.value.context["version"] == m.version
        assert exc.value.context["path"] == str(folder)
        with pytest.raises(CheckpointSignatureError):
            fresh.open("fraud", m.version)
        assert counting.state_reads == []
        # The same store object reads state files of a checkpoint that verifies.
        Checkpointer(fresh).load("fraud", good.version).restore(RiverAdapter({}))
        assert f"{good.version}/{blob_file(RIVER_BLOB)}" in counting.state_reads
        fresh.close()


def test_an_old_signed_version_swapped_in_for_a_newer_one_is_refused(tmp_path: Path) -> None:
    store = CheckpointStore(config(tmp_path))
    old = save(store, step=1)
    save(store, step=2)
    new = save(store, step=3)
    model_dir = store.config.root / "fraud"
    shutil.rmtree(model_dir / new.version)
    shutil.copytree(model_dir / old.version, model_dir / new.version)
    store.close()
    fresh = CheckpointStore(config(tmp_path))
    for version in (new.version, None):
        with pytest.raises(CheckpointSignatureError) as exc:
            fresh.open("fraud", version)
        assert exc.value.reason == "wrong_checkpoint"
        assert exc.value.context["version"] == new.version
    assert fresh.open("fraud", old.version).read("model.safetensors") == b"weights-1" * 10


def test_unsigned_checkpoints_are_listed_and_kept_but_not_loaded(tmp_path: Path) -> None:
    store = CheckpointStore(config(tmp_path))
    versions = [save(store, step=i).version for i in range(3)]
    strip_signatures(store, "fraud")
    fresh = CheckpointStore(config(tmp_path))
    assert [m.version for m in fresh.manifests("fraud")] == versions
    assert [r.version for r in fresh.query("fraud", deep=True)] == versions
    (plan,) = fresh.gc("fraud")
    assert plan.quarantine == []
    assert plan.delete == []
    assert [m.version for m in fresh.manifests("fraud")] == versions
    assert fresh.quarantined("fraud") == []
    with pytest.raises(CheckpointSignatureError, match="sign --adopt") as exc:
        fresh.open("fraud")
    assert exc.value.reason == "unsigned"
    with pytest.raises(CheckpointSignatureError):
        fresh.latest("fraud")
    assert fresh.unsigned("fraud") == [("fraud", v) for v in versions]


def test_a_file_reused_from_an_unverified_checkpoint_is_not_read(tmp_path: Path) -> None:
    store = CheckpointStore(config(tmp_path))
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    net = torch.nn.ModuleDict({"emb": torch.nn.Embedding(50, 4), "head": torch.nn.Linear(4, 1)})
    first = checkpointer.save("e", TorchAdapter(net), step=0).result()
    with torch.no_grad():
        net["emb"].weight[[1]] += 1.0  # the head is unchanged: its files are reused
    second = checkpointer.save("e", TorchAdapter(net), step=1).result()
    reused = [f.name for f in second.files if f.ref_version == first.version]
    assert reused, "the delta reuses files of the first checkpoint"
    edit_manifest(store, "e", first.version, signature=None)
    fresh = CheckpointStore(config(tmp_path))
    counting = CountingStorage(fresh.hot)
    fresh.hot = counting  # type: ignore[assignment]
    reader = fresh.open("e", second.version)  # its own manifest is fine
    with pytest.raises(CheckpointSignatureError) as exc:
        reader.read(reused[0])
    assert exc.value.context["version"] == first.version
    assert counting.state_reads == []


def test_saving_after_the_newest_stopped_verifying_writes_a_full_checkpoint(
    tmp_path: Path,
) -> None:
    """A restarted writer never diffs against (reads) a checkpoint that does not verify."""
    store = CheckpointStore(config(tmp_path))
    net = torch.nn.Linear(3, 1)
    Checkpointer(store, CheckpointerConfig(async_saves=False)).save(
        "n", TorchAdapter(net), step=0
    ).result()
    newest = store.manifests("n")[-1]
    edit_manifest(store, "n", newest.version, signature=None)
    fresh = CheckpointStore(config(tmp_path))
    counting = CountingStorage(fresh.hot)
    fresh.hot = counting  # type: ignore[assignment]
    saved = (
        Checkpointer(fresh, CheckpointerConfig(async_saves=False))
        .save("n", TorchAdapter(net), step=1)
        .result()
    )
    assert saved.kind == "full"
    assert all(f.ref_version is None for f in saved.files)
    assert counting.state_reads == []
    Checkpointer(fresh).load("n", saved.version)


def test_rotation_keeps_old_versions_loadable_and_unknown_keys_are_refused(
    tmp_path: Path,
) -> None:
    old_path, old_key = key_file(tmp_path, "old")
    new_path, new_key = key_file(tmp_path, "new")
    first = CheckpointStore(config(tmp_path, signing_key_file=old_path))
    v1 = save(first, step=1)
    first.close()
    old_public = public_key_b64(old_key.public_key)
    rotated = CheckpointStore(
        config(tmp_path, signing_key_file=new_path, trusted_keys=(old_public,))
    )
    assert rotated.open("fraud", v1.version).read("model.safetensors") == b"weights-1" * 10
    v2 = save(rotated, step=2)
    assert v2.signature is not None
    assert v2.signature.key_id == new_key.key_id
    rotated.close()

    forgot = CheckpointStore(config(tmp_path, signing_key_file=new_path))
    with pytest.raises(CheckpointSignatureError) as exc:
        forgot.open("fraud", v1.version)
    assert exc.value.reason == "unknown_key"
    assert exc.value.context["key_id"] == old_key.key_id
    forgot.open("fraud", v2.version).verify()

    # A read-only process holds only public keys: it loads both, and cannot commit.
    pem = tmp_path / "new.pub.pem"
    pem.write_bytes(public_key_pem(new_key.public_key))
    reader = CheckpointStore(
        config(
            tmp_path,
            signing_key_file=None,
            trusted_keys=(public_key_b64(old_key.public_key), str(pem)),
        )
    )
    for v in (v1, v2):
        reader.open("fraud", v.version).verify()
    with pytest.raises(ConfigError, match="no signing key: set DRIFTLOOP_STORE_SIGNING_KEY"):
        save(reader, step=3)
    assert [m.version for m in reader.manifests("fraud")] == [v1.version, v2.version]
    assert sorted(os.listdir(tmp_path / "hot" / "fraud")) == sorted(
        [".lock", ".seq", v1.version, v2.version]
    )


def test_trusted_keys_come_from_the_environment_as_a_json_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = Signer.generate(), Signer.generate()
    entries = [public_key_b64(a.public_key), public_key_b64(b.public_key)]
    monkeypatch.setenv("DRIFTLOOP_STORE_TRUSTED_KEYS", orjson.dumps(entries).decode())
    store = CheckpointStore(config(tmp_path))
    assert {a.key_id, b.key_id, store.require_signer().key_id} == set(store.trusted.key_ids)


def test_adopt_signs_an_unsigned_store_which_then_loads(tmp_path: Path) -> None:
    store = CheckpointStore(config(tmp_path))
    checkpointer = Checkpointer(store, CheckpointerConfig(async_saves=False))
    net = torch.nn.ModuleDict({"emb": torch.nn.Embedding(50, 4), "head": torch.nn.Linear(4, 1)})
    for step in range(3):  # a full save, then deltas reusing its files
        with torch.no_grad():
            net["emb"].weight[[step]] += 1.0
        checkpointer.save("e", TorchAdapter(net), step=step).result()
    assert any(f.ref_version for f in store.manifests("e")[-1].files)
    expected = {k: v.detach().clone() for k, v in net.state_dict().items()}
    strip_signatures(store, "e")
    reader_only = CheckpointStore(config(tmp_path, signing_key_file=None))
    with pytest.raises(ConfigError, match="no signing key"):
        reader_only.adopt()
    fresh = CheckpointStore(config(tmp_path))
    with pytest.raises(CheckpointSignatureError):
        Checkpointer(fresh).load("e")
    done = []
    signed = fresh.adopt(progress=lambda i, n: done.append((i, n)))
    assert signed == [m.version for m in fresh.manifests("e")]
    assert done[-1] == (3, 3)
    assert fresh.unsigned() == []
    loaded = Checkpointer(CheckpointStore(config(tmp_path))).load("e")
    assert loaded.state.groups["model"].keys() == expected.keys()
    for name, value in expected.items():
        assert torch.equal(loaded.state.groups["model"][name], value), name
    assert fresh.adopt() == []  # nothing left to sign


def test_adopt_does_not_sign_a_version_whose_files_do_not_match(tmp_path: Path) -> None:
    store = CheckpointStore(config(tmp_path))
    good, bad = save(store, step=1), save(store, step=2)
    strip_signatures(store, "fraud")
    (store.config.root / "fraud" / bad.version / "model.safetensors").write_bytes(b"evil")
    fresh = CheckpointStore(config(tmp_path))
    assert fresh.adopt() == [good.version]
    assert fresh.unsigned() == [("fraud", bad.version)]


def test_ensure_default_key_makes_one_key_outside_the_store(tmp_path: Path) -> None:
    base = config(tmp_path, signing_key_file=None, key_dir=tmp_path / "keys")
    first = ensure_default_key(base)
    assert first.signing_key_file == tmp_path / "keys" / "checkpoint-signing.pem"
    assert stat.S_IMODE(first.signing_key_file.stat().st_mode) == 0o600
    again = ensure_default_key(base)
    assert Signer.from_file(again.signing_key_file).key_id == (  # type: ignore[arg-type]
        Signer.from_file(first.signing_key_file).key_id
    )
    save(CheckpointStore(first), step=1)
    CheckpointStore(again).open("fraud").verify()
    with pytest.raises(ConfigError, match="outside the checkpoint store"):
        ensure_default_key(config(tmp_path, signing_key_file=None, key_dir=tmp_path / "hot" / "k"))
    own = config(tmp_path)  # a key is configured: left as it is
    assert ensure_default_key(own) == own


def test_the_demo_hands_the_default_key_to_its_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.demo.runner import _signing_env

    monkeypatch.delenv("DRIFTLOOP_STORE_SIGNING_KEY_FILE")
    monkeypatch.setenv("DRIFTLOOP_STORE_KEY_DIR", str(tmp_path / "keys"))
    env = _signing_env(tmp_path / "store")
    path = Path(env["DRIFTLOOP_STORE_SIGNING_KEY_FILE"])
    assert path.parent == tmp_path / "keys"
    assert _signing_env(tmp_path / "other") == env  # the same key on every run
    monkeypatch.setenv("DRIFTLOOP_STORE_SIGNING_KEY_FILE", str(path))
    worker_store = CheckpointStore(StoreConfig(root=tmp_path / "store"))
    assert worker_store.require_signer().key_id == Signer.from_file(path).key_id


def test_a_trainer_worker_without_a_key_refuses_to_start(tmp_path: Path) -> None:
    from services.config import KafkaConfig
    from services.learning.config import example_path
    from streams.worker import WorkerConfig, build

    with pytest.raises(ConfigError, match="no signing key"):
        build(
            "trainer",
            kafka=KafkaConfig(bootstrap="127.0.0.1:9"),  # refused before anything connects
            worker=WorkerConfig(datadir=tmp_path / "faust"),
            models_path=example_path("river_logreg"),
            store=config(tmp_path, signing_key_file=None),
        )


# -- the CLI ---------------------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["checkpoints", *args])
    return result.exit_code, result.stdout, result.stderr


def test_cli_verify_reports_unsigned_and_wrongly_signed_and_sign_adopt_fixes_it(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(config(tmp_path))
    v1, v2, v3, v4 = (save(store, step=i).version for i in range(4))
    root = str(tmp_path / "hot")
    code, out, _ = cli("verify", "--store", root, "--json")
    assert code == 0, out
    for v in (v1, v2):  # written before signing existed
        edit_manifest(store, "fraud", v, signature=None)
    forged = Signer.generate().sign(store.manifest("fraud", v3).model_copy(update={"step": 7}))
    edit_manifest(store, "fraud", v3, orjson.loads(forged.model_dump_json()))
    edit_manifest(store, "fraud", v4, step=99)  # its signature kept
    store.close()
    code, out, _ = cli("verify", "--store", root, "--json")
    assert code == 1
    problems = {p["version"]: p for p in orjson.loads(out)["problems"]}
    assert {v: p["reason"] for v, p in problems.items()} == {
        v1: "unsigned",
        v2: "unsigned",
        v3: "unknown_key",
        v4: "bad_signature",
    }
    assert "sign --adopt" in problems[v1]["problem"]
    code, out, _ = cli("verify", "--store", root)
    assert code == 1
    assert f"{v1}: manifest is unsigned" in " ".join(out.split())

    code, out, err = cli("sign", "--store", root)
    assert code == 2
    assert "--adopt" in err
    assert "2 unsigned" in err
    code, out, _ = cli("list", "--store", root, "--json")
    assert [c["version"] for c in orjson.loads(out)["checkpoints"]] == [v1, v2, v3, v4]
    code, out, _ = cli("show", "fraud", v1, "--store", root, "--json")
    assert code == 0
    assert orjson.loads(out)["manifest"]["version"] == v1

    code, out, _ = cli("sign", "--adopt", "--store", root, "--json")
    assert code == 0, out
    result = orjson.loads(out)
    assert result["signed"] == [v1, v2]
    assert result["unsigned"] == []
    code, out, _ = cli("verify", "--store", root, "--json")
    problems = orjson.loads(out)["problems"]
    assert [(p["version"], p["reason"]) for p in problems] == [
        (v3, "unknown_key"),
        (v4, "bad_signature"),
    ]
    assert CheckpointStore(config(tmp_path)).open("fraud", v2).read("state/optim.json")
