"""Time-ordered string ids: ``<prefix>_`` + 26 Crockford base32 characters.

48 bits of milliseconds since the epoch, then 80 bits that are random for the first id
of a millisecond and incremented after that (ULID's monotonic rule). So ids sort in
creation order (across processes to the millisecond, within a process exactly), and
``ORDER BY id`` doubles as a cursor for pagination without a second index.
"""

from __future__ import annotations

import re
import secrets
import threading
import time

ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford, lowercase: ASCII order = value order
RANDOM_BITS = 80
_RANDOM_MAX = (1 << RANDOM_BITS) - 1

#: What any id looks like: generated ones, and stable ones such as the demo datasets'
#: ``ds_demo_forget10``. Lookups skip the database for anything else (a path segment
#: with a NUL byte would otherwise reach Postgres, which rejects it).
ID_PATTERN = re.compile(r"^[a-z]{1,8}_[A-Za-z0-9._-]{1,64}$")

_lock = threading.Lock()
_last_ms = -1
_last_random = 0


def _next_value() -> int:
    global _last_ms, _last_random
    with _lock:
        now_ms = time.time_ns() // 1_000_000
        if now_ms <= _last_ms and _last_random < _RANDOM_MAX:
            # Same (or a clock that stepped back) millisecond: stay strictly increasing.
            now_ms, random_part = _last_ms, _last_random + 1
        else:
            random_part = secrets.randbits(RANDOM_BITS)
        _last_ms, _last_random = now_ms, random_part
    return (now_ms << RANDOM_BITS) | random_part


def encode(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    """E.g. ``new_id("job")`` -> ``job_01hz3k...`` (31 characters)."""
    return f"{prefix}_{encode(_next_value())}"


def timestamp_ms(identifier: str) -> int:
    """The creation time (ms since the epoch) encoded in an id."""
    value = 0
    for char in identifier.rsplit("_", 1)[-1]:
        value = value * 32 + ALPHABET.index(char)
    return value >> RANDOM_BITS


def is_id(value: str, prefix: str | None = None) -> bool:
    if not ID_PATTERN.match(value):
        return False
    return prefix is None or value.startswith(prefix + "_")
