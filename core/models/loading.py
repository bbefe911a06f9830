"""Fetch a model reference to something ``from_pretrained`` can open, and open it.

References are vetted by :mod:`core.models.locations` first. Object-store and http(s)
models are copied into ``$OBLIVIATE_HOME/cache/models/<hash>`` once and reused. A LoRA
checkpoint (a folder with ``adapter_config.json``) is opened on top of its base model,
whose reference the checkpoint's manifest records, and merged so training starts from
plain weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import os
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from core.errors import ModelLocationError
from core.models.locations import check_public_url, classify_model_location
from core.settings import Settings
from core.storage.locations import parse_s3_url

log = logging.getLogger(__name__)

#: name -> source reference, for registered models (the service passes a DB lookup)
RegistryLookup = Callable[[str], "str | None"]

COMPLETE_MARKER = ".obliviate-complete"
#: What makes a folder a model: a transformers config, a peft adapter's, or a guard's
#: (core.methods.guard: served on top of its base model).
MODEL_FOLDER_FILES = ("config.json", "adapter_config.json", "guard.json")
CHUNK_BYTES = 1 << 20
#: What a damaged, encrypted or otherwise unreadable zip or (compressed) tar raises.
#: OSError covers gzip's and bz2's bad data (no errno); one with an errno is a disk
#: problem and is re-raised as such.
UNREADABLE_ARCHIVE = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    RuntimeError,  # zipfile: encrypted member
    NotImplementedError,  # zipfile: unsupported compression method
    OSError,
)


def fetch_model(
    reference: str,
    settings: Settings,
    *,
    lookup: RegistryLookup | None = None,
    param: str = "model",
    via_registry: bool = False,
    _depth: int = 0,
) -> str:
    """Return a local folder (or a hub id) holding the model ``reference`` names.

    Object-store and archive models are fetched into a temporary folder next to the
    cache entry, within ``OBLIVIATE_MAX_MODEL_BYTES``/``OBLIVIATE_MAX_MODEL_FILES``,
    checked to be a model folder, and only then renamed into place: a failed or refused
    fetch leaves nothing behind, and two workers fetching the same model do not trip
    over each other's halves.
    """
    if _depth > 4:
        raise ModelLocationError(
            f"model reference {reference!r} is a chain of more than 4 names", param=param
        )
    location = classify_model_location(reference, settings, param=param, via_registry=via_registry)
    if location.kind == "registered":
        source = lookup(location.value) if lookup else None
        if source is None:
            raise ModelLocationError(
                f"no registered model named {reference!r}", param=param, code="unknown_model"
            )
        return fetch_model(
            source, settings, lookup=lookup, param=param, via_registry=True, _depth=_depth + 1
        )
    if location.kind in ("local", "hub"):
        return location.value
    cache = settings.cache_dir / "models"
    target = cache / hashlib.sha256(location.value.encode()).hexdigest()[:24]
    if (target / COMPLETE_MARKER).exists():
        return str(target)
    cache.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".partial-{target.name}-", dir=cache))
    try:
        if location.kind == "store":
            _download_from_store(location.value, partial, settings, param)
        else:
            _download_archive(location.value, partial, settings, param)
        _check_model_folder(partial, reference, param)
        (partial / COMPLETE_MARKER).touch()
        if target.exists():
            shutil.rmtree(target)  # an incomplete entry left by an older version
        try:
            partial.rename(target)
        except OSError:
            if not (target / COMPLETE_MARKER).exists():
                raise
            # Another worker finished the same model first: use theirs.
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return str(target)


def _check_model_folder(folder: Path, reference: str, param: str) -> None:
    """A fetched folder must hold a model where ``from_pretrained`` looks (at its top)."""
    if not any((folder / name).is_file() for name in MODEL_FOLDER_FILES):
        raise ModelLocationError(
            f"{reference} is not a model folder: no {' or '.join(MODEL_FOLDER_FILES)} at its "
            "top level (expected the save_pretrained layout)",
            param=param,
            code="invalid_model_folder",
        )


def _model_too_large(reference: str, settings: Settings, param: str) -> ModelLocationError:
    return ModelLocationError(
        f"{reference} holds more than {settings.max_model_bytes} bytes (OBLIVIATE_MAX_MODEL_BYTES)",
        param=param,
        code="model_too_large",
    )


def _too_many_files(reference: str, settings: Settings, param: str) -> ModelLocationError:
    return ModelLocationError(
        f"{reference} holds more than {settings.max_model_files} files (OBLIVIATE_MAX_MODEL_FILES)",
        param=param,
        code="too_many_model_files",
    )


def _download_from_store(url: str, target: Path, settings: Settings, param: str) -> None:
    """Every object under the prefix, sizes and count checked from the listing before
    anything is downloaded. The store is opened read-only: it never creates a bucket."""
    from core.storage import open_store

    location = parse_s3_url(url)
    store = open_store(
        f"s3://{location.bucket}",
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
    )
    prefix = f"{location.prefix}/" if location.prefix else ""
    try:
        objects = store.list(prefix)
    except Exception as exc:  # noqa: BLE001 - boto3's errors: no such bucket, access denied
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        if code in ("NoSuchBucket", "404", "AccessDenied", "403"):
            raise ModelLocationError(
                f"cannot list {url}: {code}", param=param, code="model_not_found"
            ) from None
        raise
    if not objects:
        raise ModelLocationError(f"nothing stored under {url}", param=param, code="model_not_found")
    if len(objects) > settings.max_model_files:
        raise _too_many_files(url, settings, param)
    if sum(info.size for info in objects) > settings.max_model_bytes:
        raise _model_too_large(url, settings, param)
    for info in objects:
        relative = info.key[len(prefix) :]
        if relative.endswith("/"):
            continue  # a folder marker, not a file
        path = _member_path(target, relative, url, param)
        store.download_file(info.key, path)
    # A listing can change between the LIST and the GETs: count what actually arrived.
    if _folder_bytes(target) > settings.max_model_bytes:
        raise _model_too_large(url, settings, param)


def _folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _download_archive(url: str, target: Path, settings: Settings, param: str) -> None:
    """Stream the archive to disk (never into memory), within the byte limit, then
    extract it member by member within the byte and file limits."""
    import httpx

    check_public_url(url, settings, param=param)  # again: DNS may have changed since submission
    fd, archive_name = tempfile.mkstemp(prefix=".archive-", dir=target.parent)
    archive_path = Path(archive_name)
    try:
        with os.fdopen(fd, "wb") as archive_file:
            with httpx.Client(follow_redirects=False, timeout=60) as client:
                with client.stream("GET", url) as response:
                    if response.status_code != 200:
                        raise ModelLocationError(
                            f"GET {url} answered {response.status_code}",
                            param=param,
                            code="model_not_found",
                        )
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > settings.max_model_bytes:
                        raise _model_too_large(url, settings, param)
                    received = 0
                    for chunk in response.iter_bytes(CHUNK_BYTES):
                        received += len(chunk)
                        if received > settings.max_model_bytes:
                            raise _model_too_large(url, settings, param)
                        archive_file.write(chunk)
        _extract(archive_path, url, target, settings, param)
    finally:
        archive_path.unlink(missing_ok=True)


def _extract(archive_path: Path, url: str, target: Path, settings: Settings, param: str) -> None:
    budget = _ExtractionBudget(url, settings, param)
    try:
        if url.endswith(".zip"):
            with zipfile.ZipFile(archive_path) as archive:
                for member in archive.infolist():
                    if member.is_dir():
                        continue
                    path = _member_path(target, member.filename, url, param)
                    budget.add_member(member.file_size)
                    with archive.open(member) as source:
                        budget.copy(source, path)
        else:
            with tarfile.open(archive_path) as archive:
                for member in archive:  # streamed: the member list is never held whole
                    if member.isdir():
                        continue
                    if not member.isfile():
                        raise ModelLocationError(
                            f"archive member {member.name!r} is a link or device; a model "
                            "archive holds plain files",
                            param=param,
                            code="invalid_model_folder",
                        )
                    path = _member_path(target, member.name, url, param)
                    budget.add_member(member.size)
                    source = archive.extractfile(member)
                    budget.copy(source, path)
    except UNREADABLE_ARCHIVE as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # a full disk is the service's problem, not a bad archive
        raise ModelLocationError(
            f"{url} is not a readable archive: {exc}", param=param, code="invalid_model_folder"
        ) from None


class _ExtractionBudget:
    """Members and bytes written so far against the model limits. Sizes are checked as
    declared (before a member is written) and as written (a zip's header can lie)."""

    def __init__(self, url: str, settings: Settings, param: str):
        self.url, self.settings, self.param = url, settings, param
        self.members = 0
        self.bytes = 0

    def add_member(self, declared_size: int) -> None:
        self.members += 1
        if self.members > self.settings.max_model_files:
            raise _too_many_files(self.url, self.settings, self.param)
        if self.bytes + declared_size > self.settings.max_model_bytes:
            raise _model_too_large(self.url, self.settings, self.param)

    def copy(self, source: BinaryIO, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            while chunk := source.read(CHUNK_BYTES):
                self.bytes += len(chunk)
                if self.bytes > self.settings.max_model_bytes:
                    raise _model_too_large(self.url, self.settings, self.param)
                out.write(chunk)


def _member_path(target: Path, name: str, url: str, param: str) -> Path:
    """Where a member (or object) goes; refuses names that leave ``target``."""
    root = target.resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise ModelLocationError(
            f"{url}: member {name!r} escapes the model folder",
            param=param,
            code="invalid_model_folder",
        )
    return path


def load_model(
    path_or_id: str,
    *,
    lookup: RegistryLookup | None = None,
    settings: Settings | None = None,
    dtype: str = "auto",
    reference: str | None = None,
    param: str = "model",
):
    """``(model, tokenizer)`` from a local folder or hub id; LoRA checkpoints are merged.

    A folder transformers cannot load (no weights, a config it does not know, corrupt
    safetensors) is a user's error with code ``invalid_model``; its message names
    ``reference`` (what the user gave), not the local cache folder.
    """
    from safetensors import SafetensorError

    try:
        return _load_model(path_or_id, lookup=lookup, settings=settings, dtype=dtype)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        reason = str(exc).replace(path_or_id, reference or "the model").strip()
        raise ModelLocationError(
            f"{reference or path_or_id} cannot be loaded as a causal language model: "
            f"{type(exc).__name__}: {reason}"[:1000],
            param=param,
            code="invalid_model",
        ) from exc


def _load_model(path_or_id: str, *, lookup, settings, dtype):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from core.runtime import quiet_transformers

    quiet_transformers()
    folder = Path(path_or_id)
    torch_dtype = {
        "auto": "auto",
        "fp32": torch.float32,
        "bf16": torch.bfloat16,
        "fp16": torch.float16,
    }[dtype]
    if (folder / "adapter_config.json").exists():
        return _load_adapter(folder, lookup=lookup, settings=settings, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path_or_id)
    model = AutoModelForCausalLM.from_pretrained(path_or_id, dtype=torch_dtype)
    if tokenizer.pad_token_id is None:
        # Many causal LMs ship without a pad token; padding positions are masked anyway.
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _load_adapter(folder: Path, *, lookup, settings, dtype):
    from peft import PeftModel

    from core.settings import get_settings

    manifest_path = folder / "manifest.json"
    base_ref = (
        json.loads(manifest_path.read_text())["base_model"] if manifest_path.exists() else None
    )
    if base_ref is None:
        base_ref = json.loads((folder / "adapter_config.json").read_text())[
            "base_model_name_or_path"
        ]
    settings = settings or get_settings()
    base, tokenizer = _load_model(
        fetch_model(base_ref, settings, lookup=lookup),
        lookup=lookup,
        settings=settings,
        dtype=dtype,
    )
    model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    return model, tokenizer
