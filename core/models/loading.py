"""Fetch a model reference to something ``from_pretrained`` can open, and open it.

References are vetted by :mod:`core.models.locations` first. Object-store and http(s)
models are copied into ``$OBLIVIATE_HOME/cache/models/<hash>`` once and reused. A LoRA
checkpoint (a folder with ``adapter_config.json``) is opened on top of its base model,
whose reference the checkpoint's manifest records, and merged so training starts from
plain weights.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from core.errors import ModelLocationError
from core.models.locations import check_public_url, classify_model_location
from core.settings import Settings

log = logging.getLogger(__name__)

#: name -> source reference, for registered models (the service passes a DB lookup)
RegistryLookup = Callable[[str], "str | None"]

COMPLETE_MARKER = ".obliviate-complete"


def fetch_model(
    reference: str,
    settings: Settings,
    *,
    lookup: RegistryLookup | None = None,
    param: str = "model",
    _depth: int = 0,
) -> str:
    """Return a local folder (or a hub id) holding the model ``reference`` names."""
    if _depth > 4:
        raise ModelLocationError(
            f"model reference {reference!r} is a chain of more than 4 names", param=param
        )
    location = classify_model_location(reference, settings, param=param)
    if location.kind == "registered":
        source = lookup(location.value) if lookup else None
        if source is None:
            raise ModelLocationError(
                f"no registered model named {reference!r}", param=param, code="unknown_model"
            )
        return fetch_model(source, settings, lookup=lookup, param=param, _depth=_depth + 1)
    if location.kind in ("local", "hub"):
        return location.value
    target = (
        settings.cache_dir / "models" / hashlib.sha256(location.value.encode()).hexdigest()[:24]
    )
    if (target / COMPLETE_MARKER).exists():
        return str(target)
    if target.exists():
        shutil.rmtree(target)  # an earlier download died halfway
    target.mkdir(parents=True)
    if location.kind == "store":
        _download_from_store(location.value, target, settings, param)
    else:
        _download_archive(location.value, target, settings, param)
    (target / COMPLETE_MARKER).touch()
    return str(target)


def _download_from_store(url: str, target: Path, settings: Settings, param: str) -> None:
    from urllib.parse import urlparse

    from core.storage import ObjectNotFound, open_store

    parsed = urlparse(url)
    store = open_store(
        f"s3://{parsed.netloc}", endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
    )
    try:
        store.download_prefix(parsed.path.strip("/"), target)
    except ObjectNotFound:
        raise ModelLocationError(
            f"nothing stored under {url}", param=param, code="model_not_found"
        ) from None


def _download_archive(url: str, target: Path, settings: Settings, param: str) -> None:
    import httpx

    check_public_url(url, settings, param=param)  # again: DNS may have changed since submission
    with httpx.Client(follow_redirects=False, timeout=60) as client:
        response = client.get(url)
    if response.status_code != 200:
        raise ModelLocationError(
            f"GET {url} answered {response.status_code}", param=param, code="model_not_found"
        )
    data = io.BytesIO(response.content)
    if url.endswith(".zip"):
        with zipfile.ZipFile(data) as archive:
            for member in archive.namelist():
                _check_member(member, target, param)
            archive.extractall(target)
    else:
        with tarfile.open(fileobj=data) as archive:
            archive.extractall(target, filter="data")  # refuses links and paths outside target


def _check_member(name: str, target: Path, param: str) -> None:
    resolved = (target / name).resolve()
    if target.resolve() not in resolved.parents and resolved != target.resolve():
        raise ModelLocationError(f"archive member {name!r} escapes the model folder", param=param)


def load_model(
    path_or_id: str,
    *,
    lookup: RegistryLookup | None = None,
    settings: Settings | None = None,
    dtype: str = "auto",
):
    """``(model, tokenizer)`` from a local folder or hub id; LoRA checkpoints are merged."""
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
    base, tokenizer = load_model(
        fetch_model(base_ref, settings, lookup=lookup),
        lookup=lookup,
        settings=settings,
        dtype=dtype,
    )
    model = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    return model, tokenizer
