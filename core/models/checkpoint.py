"""Write a checkpoint in the ``save_pretrained`` layout plus a manifest, written last.

The manifest lists every file with its size and sha256 and records what produced the
checkpoint (base model, method, hyperparameters, seed, data hashes), so an auditor can
tie a model file to a deletion request. Readers treat a folder without a manifest as
incomplete.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "obliviate-checkpoint/1"


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def list_files(folder: Path) -> list[dict]:
    return [
        {
            "path": p.relative_to(folder).as_posix(),
            "size": p.stat().st_size,
            "sha256": sha256_file(p),
        }
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    ]


def folder_digest(files: list[dict]) -> str:
    """One sha256 for a model folder: of the canonical JSON of its ``list_files``
    listing (paths, sizes, sha256s), so two folders agree exactly when every file does."""
    listing = [{"path": f["path"], "sha256": f["sha256"], "size": f["size"]} for f in files]
    return hashlib.sha256(
        json.dumps(listing, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def save_checkpoint(
    model, tokenizer, folder: Path, *, info: dict, merge_lora: bool = False
) -> dict:
    """Save ``model`` (a transformers or peft model) and return the manifest.

    ``info`` carries provenance (base_model, method, hyperparameters, seed, data, ...).
    For LoRA the folder holds the adapter, and ``merged/`` the merged model on request.
    """
    from core.runtime import quiet_transformers

    quiet_transformers()
    folder.mkdir(parents=True, exist_ok=True)
    is_adapter = hasattr(model, "peft_config")
    if is_adapter:
        # The adapter's base is recorded as the reference the job used (a registered
        # name, a URL), not a cache path that means nothing on another machine.
        for config in model.peft_config.values():
            config.base_model_name_or_path = info.get("base_model")
        model.save_pretrained(folder)
        if getattr(model, "fila_offsets", None):
            from core.training.fila import fold_into_saved_adapter

            # The live base holds W - s B0 A0; the saved adapter applies to W itself.
            fold_into_saved_adapter(folder, model.fila_offsets)
        tokenizer.save_pretrained(folder)
        if merge_lora:
            merged = model.merge_and_unload()
            merged.save_pretrained(folder / "merged")
            tokenizer.save_pretrained(folder / "merged")
    else:
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "kind": "lora_adapter" if is_adapter else "full",
        "merged": "merged" if is_adapter and merge_lora else None,
        **info,
        "files": list_files(folder),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def verify_checkpoint(folder: Path) -> list[str]:
    """Paths whose size or sha256 differs from the manifest (empty = intact)."""
    manifest = json.loads((folder / MANIFEST).read_text())
    bad = []
    for entry in manifest["files"]:
        path = folder / entry["path"]
        if (
            not path.is_file()
            or path.stat().st_size != entry["size"]
            or sha256_file(path) != entry["sha256"]
        ):
            bad.append(entry["path"])
    return bad
