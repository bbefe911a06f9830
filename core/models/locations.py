"""Classify and vet a model reference before anything is downloaded (no torch).

A reference is one of:

- a registered model name (``demo-target``, ``job_..-output``): looked up in the
  database by the caller;
- a local folder, as an absolute path or ``file://`` URL: only inside
  ``OBLIVIATE_MODEL_ROOTS`` (plus ``$OBLIVIATE_HOME/models``);
- an object-store URL, ``s3://bucket/prefix`` holding a ``save_pretrained`` folder: only
  inside ``OBLIVIATE_MODEL_BUCKETS``, and never inside the service's own storage (its
  jobs' checkpoints, reports and datasets) unless it is the source of a registered
  model (``via_registry``): the registry is how one job's output becomes another's
  input, and a user may not name the prefix itself;
- an ``http(s)://`` URL of a ``.tar``/``.tar.gz``/``.zip`` archive of such a folder:
  never on loopback, private or link-local addresses unless allowed (SSRF);
- a Hugging Face hub id ``org/name`` (when ``OBLIVIATE_ALLOW_HUB_MODELS``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse
from urllib.request import url2pathname

from core.errors import ModelLocationError
from core.net import UnresolvableHost, first_forbidden, resolve_addresses
from core.settings import Settings
from core.storage.locations import parse_s3_url

LocationKind = Literal["registered", "local", "store", "http", "hub"]

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HUB_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


@dataclass(frozen=True)
class ModelLocation:
    kind: LocationKind
    value: str  # name, absolute path, URL or hub id


def classify_model_location(
    reference: str, settings: Settings, *, param: str = "model", via_registry: bool = False
) -> ModelLocation:
    """Say what kind of reference this is and reject the ones we must not load.

    ``via_registry``: the reference is a registered model's source, which may lie in the
    service's own storage. DNS is resolved for http(s) URLs so a hostname pointing at a
    private address is refused too. The worker checks again when it downloads.
    """
    reference = reference.strip()
    parsed = urlparse(reference)
    if parsed.scheme == "file" or reference.startswith("/"):
        path = Path(url2pathname(parsed.path) if parsed.scheme == "file" else reference)
        return ModelLocation("local", str(check_local_path(path, settings, param=param)))
    if parsed.scheme == "s3":
        return ModelLocation(
            "store", check_store_location(reference, settings, param, via_registry=via_registry)
        )
    if parsed.scheme in ("http", "https"):
        check_public_url(reference, settings, param=param)
        if not parsed.path.endswith(ARCHIVE_SUFFIXES):
            raise ModelLocationError(
                f"an http(s) model URL must point to an archive ({', '.join(ARCHIVE_SUFFIXES)})",
                param=param,
            )
        return ModelLocation("http", reference)
    if parsed.scheme:
        raise ModelLocationError(
            f"unsupported model location scheme {parsed.scheme!r}; use a registered model "
            "name, an allowed local folder, s3://, https:// or a hub id",
            param=param,
        )
    if NAME_PATTERN.match(reference):
        return ModelLocation("registered", reference)
    if HUB_PATTERN.match(reference):
        if not settings.allow_hub_models:
            raise ModelLocationError(
                "hub models are disabled on this service (OBLIVIATE_ALLOW_HUB_MODELS=false)",
                param=param,
                code="model_location_not_allowed",
            )
        return ModelLocation("hub", reference)
    raise ModelLocationError(f"not a model reference: {reference!r}", param=param)


def check_store_location(
    reference: str, settings: Settings, param: str, *, via_registry: bool = False
) -> str:
    """The normalized ``s3://bucket/prefix`` of an allowed object-store model location.

    Messages name the reference the user gave, never the configured buckets.
    """
    try:
        location = parse_s3_url(reference)
    except ValueError as exc:
        raise ModelLocationError(f"{param}: {exc}", param=param) from None
    own = settings.own_store_location
    if own is not None and own.contains(location) and via_registry:
        return str(location)
    if own is not None and (own.contains(location) or location.contains(own)):
        raise ModelLocationError(
            f"{reference} is inside this service's own storage; to start from a job's output "
            "or a demo model, use its registered name (GET /v1/models)",
            param=param,
            code="model_location_not_allowed",
        )
    allowed = [parse_s3_url(bucket) for bucket in settings.model_buckets]
    if not any(root.contains(location) for root in allowed):
        raise ModelLocationError(
            f"{reference} is outside the object-store locations this service loads models "
            "from (OBLIVIATE_MODEL_BUCKETS)",
            param=param,
            code="model_location_not_allowed",
        )
    return str(location)


def check_local_path(path: Path, settings: Settings, *, param: str = "model") -> Path:
    """The resolved folder, if it lies in a model root. Messages show the path as given,
    never the resolved one or the roots (server folders are not the client's business)."""
    resolved = path.expanduser().resolve()
    allowed = [
        root for root in settings.model_roots if resolved == root or root in resolved.parents
    ]
    if not allowed:
        raise ModelLocationError(
            f"{path} is outside the folders this service loads models from (OBLIVIATE_MODEL_ROOTS)",
            param=param,
            code="model_location_not_allowed",
        )
    if not resolved.is_dir():
        raise ModelLocationError(f"no model folder at {path}", param=param, code="model_not_found")
    return resolved


def check_public_url(url: str, settings: Settings, *, param: str = "model") -> None:
    host = urlparse(url).hostname
    if not host:
        raise ModelLocationError("URL has no host", param=param)
    if settings.allow_private_urls:
        return
    try:
        addresses = resolve_addresses(host)
    except UnresolvableHost:
        raise ModelLocationError(
            f"cannot resolve host {host!r}", param=param, code="model_not_found"
        ) from None
    ip = first_forbidden(addresses)
    if ip is not None:
        raise ModelLocationError(
            f"{host} resolves to {ip}, a private, loopback or link-local address; "
            "model URLs must be public",
            param=param,
            code="model_location_not_allowed",
        )
