"""Both object store implementations against the same contract (S3: moto's server on 127.0.0.1)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from storage import LocalStore, NotFound, ObjectStore, PreconditionFailed, StoreUnavailable, open_store


def test_put_get_roundtrip_and_overwrite(any_store: ObjectStore) -> None:
    any_store.put("a/b/c.bin", b"one")
    assert any_store.get("a/b/c.bin") == b"one"
    any_store.put("a/b/c.bin", b"two")
    assert any_store.get("a/b/c.bin") == b"two"
    assert any_store.exists("a/b/c.bin")
    assert not any_store.exists("a/b/missing.bin")


def test_missing_key_raises_not_found(any_store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        any_store.get("nope/never.json")


def test_list_by_prefix_is_sorted_and_scoped(any_store: ObjectStore) -> None:
    for key in ["x/2.json", "x/1.json", "x/sub/3.json", "xy/4.json", "y/5.json"]:
        any_store.put(key, b"{}")
    assert list(any_store.list("x/")) == ["x/1.json", "x/2.json", "x/sub/3.json"]
    assert list(any_store.list("x")) == ["x/1.json", "x/2.json", "x/sub/3.json", "xy/4.json"]
    assert list(any_store.list("none/")) == []


def test_delete(any_store: ObjectStore) -> None:
    any_store.put("d/k", b"1")
    any_store.delete("d/k")
    assert not any_store.exists("d/k")
    any_store.delete("d/k")  # absent: no error


def test_create_only_put(any_store: ObjectStore) -> None:
    any_store.put("once.json", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        any_store.put("once.json", b"second", if_none_match=True)
    assert any_store.get("once.json") == b"first"


def test_conditional_put_on_stale_etag_fails(any_store: ObjectStore) -> None:
    any_store.put("alias.json", b"v1")
    _, etag = any_store.get_with_etag("alias.json")
    any_store.put("alias.json", b"v2", if_match=etag)
    with pytest.raises(PreconditionFailed):
        any_store.put("alias.json", b"v3", if_match=etag)  # etag is of v1, object is v2 now
    assert any_store.get("alias.json") == b"v2"


def test_concurrent_conditional_puts_have_one_winner(any_store: ObjectStore) -> None:
    any_store.put("race.json", b"start")
    _, etag = any_store.get_with_etag("race.json")
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def contender(i: int) -> None:
        barrier.wait()
        try:
            any_store.put("race.json", f"winner {i}".encode(), if_match=etag)
            outcomes.append(f"won {i}")
        except PreconditionFailed:
            outcomes.append("lost")

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1, outcomes
    assert any_store.get("race.json") == f"winner {winners[0].split()[1]}".encode()


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a\\b"])
def test_invalid_keys_are_refused(any_store: ObjectStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid object key"):
        any_store.put(key, b"x")


def test_download_writes_file(any_store: ObjectStore, tmp_path: Path) -> None:
    any_store.put("m/model.onnx", b"\x00" * 1000)
    any_store.download("m/model.onnx", tmp_path / "out" / "model.onnx")
    assert (tmp_path / "out" / "model.onnx").read_bytes() == b"\x00" * 1000


def test_local_store_leaves_no_temp_files(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put("k/v.bin", b"data")
    store.put("k/v.bin", b"data2", if_match=store.get_with_etag("k/v.bin")[1])
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["v.bin"]
    assert list(store.list("")) == ["k/v.bin"]  # the lock folder is not listed


def test_open_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalStore)
    with pytest.raises(ValueError, match="unsupported"):
        open_store("ftp://host/x")
    with pytest.raises(ValueError, match="bucket"):
        open_store("s3://")


def test_unreachable_s3_is_reported_as_unavailable() -> None:
    from tests.helpers import free_port

    store = open_store("s3://bucket", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreUnavailable):
        store.get("anything")
