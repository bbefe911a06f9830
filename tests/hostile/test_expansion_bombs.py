"""Inputs that expand: each is refused at its limit with a code naming the limit, the
API process's peak memory grows by less than the stated bound
(``API_MEMORY_BOUND_MIB``), and nothing is left behind (no dataset, no cache).

The API runs as a uvicorn process of its own on Postgres and SeaweedFS with the default
data limits; its peak resident memory is read from /proc after each bomb. Archive bombs
meet the worker's loader (``fetch_model``) in this process, served from loopback."""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import pytest

from core.errors import ModelLocationError
from core.models.loading import fetch_model
from core.settings import Settings
from tests.fixtures.hostile import (
    API_MEMORY_BOUND_MIB,
    MIB,
    parquet_bomb,
    write_long_line_csv,
    write_tar_gz_bomb,
)


def upload_bomb(hostile_api, filename: str, content) -> tuple[dict, float]:
    """POST the file; returns the error and how far the API's peak memory rose (MiB)."""
    datasets_before = hostile_api.http.get("/v1/datasets", params={"limit": 100}).json()["data"]
    before = hostile_api.rss_mib()
    hostile_api.reset_peak()
    response = hostile_api.http.post("/v1/datasets", files={"file": (filename, content)})
    growth = hostile_api.peak_mib() - before
    print(f"{filename}: HTTP {response.status_code}, API peak memory +{growth:.0f} MiB")
    assert response.status_code == 413, response.text
    after = hostile_api.http.get("/v1/datasets", params={"limit": 100}).json()["data"]
    assert after == datasets_before  # nothing recorded
    return response.json()["error"], growth


def test_parquet_of_200000_repeated_rows_is_refused_at_the_decoded_size_limit(hostile_api):
    content = parquet_bomb()  # 2.2 GB of answers once decoded
    assert len(content) < 100_000
    error, growth = upload_bomb(hostile_api, "bomb.parquet", content)
    assert error["code"] == "decoded_too_large"
    assert "OBLIVIATE_MAX_DATASET_DECODED_BYTES" in error["message"]
    assert growth < API_MEMORY_BOUND_MIB


def test_csv_with_one_100_mb_line_is_refused_at_the_line_limit(hostile_api, tmp_path):
    path = write_long_line_csv(tmp_path / "long-line.csv")
    with open(path, "rb") as handle:
        error, growth = upload_bomb(hostile_api, "long-line.csv", handle)
    assert (error["code"], error["param"]) == ("line_too_large", "long-line.csv:2")
    assert growth < API_MEMORY_BOUND_MIB


def test_jsonl_with_one_record_too_many_is_refused_at_the_record_limit(hostile_api):
    limit = 500_000  # OBLIVIATE_MAX_DATASET_RECORDS's default
    content = b'{"question":"q","answer":"a"}\n' * (limit + 1)
    error, growth = upload_bomb(hostile_api, "many.jsonl", content)
    assert (error["code"], error["param"]) == ("too_many_records", f"many.jsonl:{limit + 1}")
    assert growth < API_MEMORY_BOUND_MIB


def test_a_cell_over_the_cell_limit_is_refused_naming_its_field(hostile_api):
    record = {"question": "q", "answer": "a" * (5 * MIB)}  # limit: 4 MiB
    error, growth = upload_bomb(hostile_api, "cell.jsonl", json.dumps(record).encode())
    assert (error["code"], error["param"]) == ("cell_too_large", "cell.jsonl:1:answer")
    assert growth < API_MEMORY_BOUND_MIB


def test_a_json_array_is_read_element_by_element(hostile_api):
    """A .json array of many records on one line: no line limit applies to the array,
    only to each element, and the records limit counts elements."""
    content = b"[" + b",".join([b'{"question":"q","answer":"a"}'] * 500_001) + b"]"
    error, growth = upload_bomb(hostile_api, "array.json", content)
    assert error["code"] == "too_many_records"
    assert growth < API_MEMORY_BOUND_MIB


# -- archives, in the worker's loader ------------------------------------------------------


def loader_settings(tmp_path: Path, **overrides) -> Settings:
    return Settings(
        _env_file=None,
        home=tmp_path / "worker-home",
        database_url="sqlite://",
        allow_private_urls=True,  # the archive server is on loopback
        demo_on_start=False,
        **overrides,
    )


def cache_entries(settings: Settings) -> list[str]:
    folder = settings.cache_dir / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def process_peak_growth(action) -> float:
    """Run ``action``; how far this process's peak resident memory rose (MiB)."""
    status = Path("/proc/self/status")

    def field(name: str) -> float:
        line = next(ln for ln in status.read_text().splitlines() if ln.startswith(name))
        return int(line.split()[1]) / 1024

    before = field("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")
    action()
    return field("VmHWM:") - before


@pytest.fixture(scope="module")
def tar_gz_bomb(archive_server) -> str:
    folder, base_url = archive_server
    path = write_tar_gz_bomb(folder / "bomb.tar.gz")  # 1.1 GB of zeros
    assert path.stat().st_size < 2 * MIB
    return f"{base_url}/bomb.tar.gz"


def test_tar_gz_expanding_to_1_1_gb_is_refused_at_the_model_size_limit(tmp_path, tar_gz_bomb):
    settings = loader_settings(tmp_path, max_model_bytes=64 * MIB)
    raised = []

    def fetch():
        with pytest.raises(ModelLocationError) as error:
            fetch_model(tar_gz_bomb, settings)
        raised.append(error.value)

    growth = process_peak_growth(fetch)
    print(f"bomb.tar.gz: {raised[0].code}, loader peak memory +{growth:.0f} MiB")
    assert raised[0].code == "model_too_large"
    assert "OBLIVIATE_MAX_MODEL_BYTES" in raised[0].message
    assert growth < API_MEMORY_BOUND_MIB  # streamed to disk, never read whole
    assert cache_entries(settings) == []  # the partial extraction is gone


def test_zip_with_more_members_than_allowed_is_refused(tmp_path, archive_server):
    folder, base_url = archive_server
    with zipfile.ZipFile(folder / "many.zip", "w") as archive:
        archive.writestr("config.json", "{}")
        for index in range(20):
            archive.writestr(f"shard-{index}.bin", b"")
    settings = loader_settings(tmp_path, max_model_files=10)
    with pytest.raises(ModelLocationError) as error:
        fetch_model(f"{base_url}/many.zip", settings)
    assert error.value.code == "too_many_model_files"
    assert cache_entries(settings) == []


def test_zip_expanding_past_the_limit_is_refused(tmp_path, archive_server):
    folder, base_url = archive_server
    with zipfile.ZipFile(folder / "big.zip", "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.safetensors", bytes(8 * MIB))
    settings = loader_settings(tmp_path, max_model_bytes=4 * MIB)
    with pytest.raises(ModelLocationError) as error:
        fetch_model(f"{base_url}/big.zip", settings)
    assert error.value.code == "model_too_large"
    assert cache_entries(settings) == []


def test_an_archive_over_the_limit_on_the_wire_is_refused_while_downloading(
    tmp_path, archive_server
):
    folder, base_url = archive_server
    (folder / "wire.tar").write_bytes(bytes(3 * MIB))
    settings = loader_settings(tmp_path, max_model_bytes=1 * MIB)
    with pytest.raises(ModelLocationError) as error:
        fetch_model(f"{base_url}/wire.tar", settings)
    assert error.value.code == "model_too_large"
    assert cache_entries(settings) == []


def test_archive_links_and_escaping_members_are_refused(tmp_path, archive_server):
    folder, base_url = archive_server
    with tarfile.open(folder / "link.tar", "w") as archive:
        link = tarfile.TarInfo("config.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
    with zipfile.ZipFile(folder / "escape.zip", "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("../../escaped.txt", "x")
    settings = loader_settings(tmp_path)
    for name in ("link.tar", "escape.zip"):
        with pytest.raises(ModelLocationError) as error:
            fetch_model(f"{base_url}/{name}", settings)
        assert error.value.code == "invalid_model_folder", name
    assert cache_entries(settings) == []
    assert not (tmp_path / "escaped.txt").exists()


def test_a_good_archive_lands_in_the_cache_once(tmp_path, archive_server):
    folder, base_url = archive_server
    with zipfile.ZipFile(folder / "good.zip", "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("weights.bin", b"\x01" * 100)
    settings = loader_settings(tmp_path)
    path = fetch_model(f"{base_url}/good.zip", settings)
    assert sorted(p.name for p in Path(path).iterdir()) == [
        ".obliviate-complete",
        "config.json",
        "weights.bin",
    ]
    assert fetch_model(f"{base_url}/good.zip", settings) == path
    assert len(cache_entries(settings)) == 1  # no .partial-* or .archive-* left
