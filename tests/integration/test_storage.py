"""Both object-store backends against the same contract: a local folder and a real
S3-protocol server (SeaweedFS)."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.storage import ObjectNotFound, open_store
from core.storage.s3 import S3Store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(tmp_path.as_uri())
    endpoint = request.getfixturevalue("s3_server")
    return open_store(
        f"s3://obliviate-test/{uuid.uuid4().hex}",
        endpoint_url=endpoint,
        region="us-east-1",
        create_bucket=True,
    )


def test_round_trip_list_and_delete(store, tmp_path):
    store.put_bytes("jobs/a/one.txt", b"one")
    source = tmp_path / "two.bin"
    source.write_bytes(b"\x00" * 3_000_000)
    store.put_file("jobs/a/sub/two.bin", source)
    store.put_bytes("jobs/b/three.txt", b"three")

    assert store.get_bytes("jobs/a/one.txt") == b"one"
    assert [(i.key, i.size) for i in store.list("jobs/a/")] == [
        ("jobs/a/one.txt", 3),
        ("jobs/a/sub/two.bin", 3_000_000),
    ]
    assert (
        b"".join(store.iter_chunks("jobs/a/sub/two.bin", chunk_size=1 << 16)) == source.read_bytes()
    )
    assert store.exists("jobs/b/three.txt") and not store.exists("jobs/b/missing")

    downloaded = store.download_prefix("jobs/a", tmp_path / "copy")
    assert sorted(p.relative_to(tmp_path / "copy").as_posix() for p in downloaded) == [
        "one.txt",
        "sub/two.bin",
    ]

    assert store.delete_prefix("jobs/a/") == 2
    assert store.list("jobs/a/") == []
    assert [i.key for i in store.list("jobs/")] == ["jobs/b/three.txt"]


def test_missing_objects_raise_object_not_found(store, tmp_path):
    with pytest.raises(ObjectNotFound):
        store.get_bytes("nope")
    with pytest.raises(ObjectNotFound):
        store.download_file("nope", tmp_path / "x")
    with pytest.raises(ObjectNotFound):
        store.iter_chunks("nope")


def test_upload_folder_writes_the_named_file_last(store, tmp_path):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    for name in ("manifest.json", "a.safetensors", "z.json"):
        (folder / name).write_text(name)
    written = []
    original = store.put_file
    store.put_file = lambda key, path: (written.append(key), original(key, path))
    store.upload_folder(folder, "jobs/x/final", last="manifest.json")
    assert written[-1] == "jobs/x/final/manifest.json"
    assert len(written) == 3


def test_ping(store):
    store.ping()


def test_local_store_rejects_keys_escaping_its_root(tmp_path):
    store = open_store((tmp_path / "root").as_uri())
    with pytest.raises(ValueError):
        store.put_bytes("../outside", b"x")


def test_processes_racing_to_create_the_bucket_both_start(s3_server):
    """Two API processes start against a missing bucket: both find it missing, both
    create it. The loser's BucketAlreadyOwnedByYou (or BucketAlreadyExists) is success."""
    bucket = f"obliviate-race-{uuid.uuid4().hex[:12]}"
    stores = [
        S3Store(bucket, endpoint_url=s3_server, region="us-east-1", create_bucket=False)
        for _ in range(2)
    ]
    both_looked = threading.Barrier(len(stores), timeout=30)
    for store in stores:
        head_bucket = store.client.head_bucket

        def look_then_wait(head_bucket=head_bucket, **kwargs):
            try:
                return head_bucket(**kwargs)
            finally:
                both_looked.wait()

        store.client.head_bucket = look_then_wait
    with ThreadPoolExecutor(len(stores)) as pool:
        outcomes = [pool.submit(store._ensure_bucket) for store in stores]
        errors = [outcome.exception() for outcome in outcomes]
    try:
        assert errors == [None, None]
        stores[0].put_bytes("k", b"v")
        assert stores[1].get_bytes("k") == b"v"
    finally:
        stores[0].delete_prefix("")
        stores[0].client.delete_bucket(Bucket=bucket)
