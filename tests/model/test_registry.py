"""The registry: immutable versions, aliases moved by conditional put, an event log."""

from __future__ import annotations

import threading

import pytest

from model.card import ModelCard
from model.registry import AliasConflict, Registry
from storage import ObjectStore, PreconditionFailed


def _register(registry: Registry, payload: bytes) -> str:
    card = ModelCard(input_size=32, config={"name": "tiny"})
    return registry.register({"model.onnx": payload, "canaries.npz": b"c"}, card)


def test_register_and_read_back(any_store: ObjectStore) -> None:
    registry = Registry(any_store)
    v1 = _register(registry, b"onnx-1")
    v2 = _register(registry, b"onnx-2")
    assert registry.versions() == [v1, v2]
    meta = registry.metadata(v1)
    assert meta.version == v1
    assert meta.sha256 == __import__("hashlib").sha256(b"onnx-1").hexdigest()
    assert meta.files == {"model.onnx": meta.sha256, "canaries.npz": __import__("hashlib").sha256(b"c").hexdigest()}
    assert [e["kind"] for e in registry.events()] == ["registered", "registered"]


def test_versions_are_immutable(any_store: ObjectStore) -> None:
    registry = Registry(any_store)
    v1 = _register(registry, b"onnx-1")
    with pytest.raises(PreconditionFailed):
        any_store.put(f"models/{v1}/model.onnx", b"tampered", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        any_store.put(f"models/{v1}/metadata.json", b"{}", if_none_match=True)


def test_promote_and_rollback(any_store: ObjectStore) -> None:
    registry = Registry(any_store)
    v1, v2 = _register(registry, b"a"), _register(registry, b"b")
    assert registry.alias("production") == (None, None)
    registry.promote(v1, reason="first")
    record = registry.promote(v2, reason="better")
    assert (record.version, record.previous) == (v2, v1)
    back = registry.rollback()
    assert (back.version, back.previous) == (v1, v2)
    kinds = [e["kind"] for e in registry.events()]
    assert kinds[-3:] == ["promoted", "promoted", "rolled_back"]


def test_two_concurrent_promotions_cannot_both_win(any_store: ObjectStore) -> None:
    registry = Registry(any_store)
    base, a, b = (_register(registry, bytes([i])) for i in range(3))
    registry.promote(base, reason="start")
    results: dict[str, str] = {}
    barrier = threading.Barrier(2)
    original_alias = registry.alias

    def racer(version: str) -> None:
        state = original_alias("production")  # both read the same state...
        barrier.wait()  # ...then both try to write
        mine = Registry(any_store)
        mine.alias = lambda alias="production": state  # type: ignore[method-assign]
        try:
            mine.promote(version, reason="race")
            results[version] = "won"
        except AliasConflict:
            results[version] = "lost"

    threads = [threading.Thread(target=racer, args=(v,)) for v in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["lost", "won"]
    winner = next(v for v, r in results.items() if r == "won")
    assert registry.alias("production")[0].version == winner


def test_unknown_version_and_empty_rollback(any_store: ObjectStore) -> None:
    registry = Registry(any_store)
    with pytest.raises(KeyError, match="not registered"):
        registry.promote("nope", reason="x")
    v1 = _register(registry, b"a")
    registry.promote(v1, reason="first")
    with pytest.raises(ValueError, match="no previous"):
        registry.rollback()
