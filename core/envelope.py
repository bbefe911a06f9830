"""Envelope encryption of stored datasets, so that destroying one small key erases them
(crypto-shredding). No database, no object store: bytes and files in, bytes and files
out.

Three keys, one job each:

- the **master key** (key-encryption key): 32 random bytes in a file
  (``OBLIVIATE_MASTER_KEY_FILE``), made at first use, readable by the owner only. It
  never leaves the service and never encrypts data, only data keys.
- a **data key** per dataset: 32 random bytes that encrypt that dataset's file. It is
  stored only *wrapped* (encrypted under the master key, bound to the dataset id), in
  ``datasets.wrapped_key``. Setting that column to NULL is the shredding: every copy of
  the ciphertext (the object, its versions, replicas, backups of the store) becomes
  unreadable at once.
- the ciphertext itself, written in chunks so that neither side holds a whole file in
  memory.

Wrapped key (61 bytes): ``0x01 || nonce (12) || AES-256-GCM(master, data key,
aad = b"obliviate-dataset-key:" + dataset id)`` (32 bytes of key and a 16-byte tag).

Encrypted file: a 19-byte header ``b"OBLVENC1" || nonce prefix (7 random bytes) ||
chunk size (uint32, big endian)``, then the chunks. Chunk ``i`` is
``AES-256-GCM(data key, nonce = prefix || i (uint32 BE) || last (1 byte: 1 for the final
chunk, else 0), aad = header)`` of ``chunk size`` plaintext bytes (fewer in the last,
which may be empty), each followed by its 16-byte tag. The counter stops chunks from
being reordered, the last-flag stops the file from being cut short (the STREAM
construction of Hoang, Reyhanitabar, Rogaway and Vizar, 2015).
"""

from __future__ import annotations

import base64
import os
import struct
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from core.secret_files import create_once

KEY_BYTES = 32
WRAP_VERSION = b"\x01"
MAGIC = b"OBLVENC1"
NONCE_PREFIX_BYTES = 7
TAG_BYTES = 16
CHUNK_BYTES = 1 << 20
HEADER = struct.Struct(f">{len(MAGIC)}s{NONCE_PREFIX_BYTES}sI")


class EnvelopeError(ValueError):
    """A wrapped key or an encrypted file that does not open: the wrong master key, or
    bytes that were altered or cut short."""


# -------------------------------------------------------------------------- master key


def load_or_create_master_key(path: Path) -> bytes:
    """The master key in ``path``, or a new one made there at first use (base64 of 32
    random bytes, one line), readable by the owner only. Called where datasets are
    stored; production mounts the file from a secret store instead: every API replica
    and worker must read the same key, and losing it loses every encrypted dataset."""
    create_once(path, lambda: base64.b64encode(os.urandom(KEY_BYTES)) + b"\n")
    return load_master_key(path)


def load_master_key(path: Path) -> bytes:
    """The master key in ``path``; never made here (a reader that made its own key
    would only fail later, less clearly)."""
    try:
        key = base64.b64decode(path.read_bytes().strip(), validate=True)
    except FileNotFoundError:
        raise EnvelopeError(
            f"no master key at {path}: set OBLIVIATE_MASTER_KEY_FILE to the file the API uses"
        ) from None
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise EnvelopeError(f"{path} must hold a base64-encoded {KEY_BYTES}-byte key")
    return key


# ------------------------------------------------------------------------ data keys


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def _wrap_aad(dataset_id: str) -> bytes:
    return b"obliviate-dataset-key:" + dataset_id.encode()


def wrap_key(master_key: bytes, data_key: bytes, dataset_id: str) -> bytes:
    """The data key encrypted under the master key; it only unwraps for ``dataset_id``
    (a wrapped key copied onto another dataset's row does not open)."""
    nonce = os.urandom(12)
    sealed = AESGCM(master_key).encrypt(nonce, data_key, _wrap_aad(dataset_id))
    return WRAP_VERSION + nonce + sealed


def unwrap_key(master_key: bytes, wrapped: bytes, dataset_id: str) -> bytes:
    if wrapped[:1] != WRAP_VERSION:
        raise EnvelopeError(f"dataset {dataset_id}: unknown wrapped-key version")
    try:
        return AESGCM(master_key).decrypt(wrapped[1:13], wrapped[13:], _wrap_aad(dataset_id))
    except InvalidTag:
        raise EnvelopeError(
            f"dataset {dataset_id}: its key does not unwrap with this master key "
            "(is OBLIVIATE_MASTER_KEY_FILE the same file on every API replica and worker?)"
        ) from None


# ---------------------------------------------------------------------------- files


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + struct.pack(">I?", index, last)


def encrypt_file(data_key: bytes, source: Path, target: Path, *, chunk_bytes: int = CHUNK_BYTES):
    """Write ``source`` encrypted to ``target`` (the format in the module docstring)."""
    aead = AESGCM(data_key)
    header = HEADER.pack(MAGIC, os.urandom(NONCE_PREFIX_BYTES), chunk_bytes)
    prefix = header[len(MAGIC) : len(MAGIC) + NONCE_PREFIX_BYTES]
    with source.open("rb") as reader, target.open("wb") as writer:
        writer.write(header)
        index, chunk = 0, reader.read(chunk_bytes)
        while True:
            following = reader.read(chunk_bytes)  # one ahead: is this chunk the last?
            last = not following
            writer.write(aead.encrypt(_nonce(prefix, index, last), chunk, header))
            if last:
                return
            index, chunk = index + 1, following


def decrypt_file(data_key: bytes, source: Path, target: Path) -> None:
    """Write the plaintext of ``source`` to ``target``; EnvelopeError (and no
    ``target``) when any chunk was altered, reordered or cut off."""
    aead = AESGCM(data_key)
    try:
        with source.open("rb") as reader, target.open("wb") as writer:
            header = reader.read(HEADER.size)
            if len(header) != HEADER.size or not header.startswith(MAGIC):
                raise EnvelopeError(f"{source.name} is not an encrypted dataset file")
            _, prefix, chunk_bytes = HEADER.unpack(header)
            sealed_bytes = chunk_bytes + TAG_BYTES
            index, sealed = 0, reader.read(sealed_bytes)
            while True:
                following = reader.read(sealed_bytes)
                last = not following
                try:
                    writer.write(aead.decrypt(_nonce(prefix, index, last), sealed, header))
                except InvalidTag:
                    raise EnvelopeError(
                        f"{source.name}: chunk {index} does not authenticate (altered, "
                        "truncated, or another key)"
                    ) from None
                if last:
                    return
                index, sealed = index + 1, following
    except BaseException:
        target.unlink(missing_ok=True)
        raise
