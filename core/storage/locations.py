"""``s3://bucket/prefix`` locations: parsed strictly, and compared by whole key segments.

Containment is decided on segments, never on string prefixes (``s3://b/models`` does not
contain ``s3://b/models-private``), and keys with empty, ``.`` or ``..`` segments are
refused outright: S3 itself takes them literally, but S3-compatible servers that map
keys onto file paths may not, and a prefix check on text that a server later normalizes
is no check at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlparse

# S3's bucket naming rules (lower case, 3-63 characters, no leading/trailing dot or hyphen).
BUCKET_PATTERN = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # "" for the whole bucket; never with leading or trailing "/"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.prefix.split("/")) if self.prefix else ()

    def contains(self, other: S3Location) -> bool:
        """Whether ``other`` lies in this location (or is it)."""
        return self.bucket == other.bucket and other.segments[: len(self.segments)] == self.segments


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket[/prefix]``; ValueError says what is wrong."""
    parsed = urlparse(url.strip())
    if parsed.scheme != "s3":
        raise ValueError(f"not an s3:// URL: {url!r}")
    if parsed.query or parsed.fragment or parsed.params:
        raise ValueError("an s3:// URL has no query, parameters or fragment")
    if not BUCKET_PATTERN.match(parsed.netloc):
        raise ValueError(
            "an s3:// URL needs a bucket name of 3-63 lower-case letters, digits, '.' and '-': "
            "s3://bucket/prefix"
        )
    key = parsed.path.strip("/")
    segments = key.split("/") if key else []
    if any(segment in ("", ".", "..") for segment in segments):
        raise ValueError("an s3:// prefix may not have empty, '.' or '..' segments")
    return S3Location(parsed.netloc, key)
