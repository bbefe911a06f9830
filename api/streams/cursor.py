"""A stream's position, written as each event's SSE ``id`` and read back from the
``Last-Event-ID`` header of a reconnecting client: ``event=812,metric=4410,job=...``.

For each followed table, the id of the last row delivered; for ``job``, the newest
``updated_at`` delivered (microseconds since the epoch; the job-wide stream resumes job
snapshots from it). Kinds a position does not name start from the beginning.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from core.errors import InvalidRequest

HEADER = "Last-Event-ID"
_PAIR = r"[a-z_]{1,32}=[0-9]{1,18}"
#: what a position looks like (stated in the OpenAPI document too); 18 digits keep every
#: value below 2**62, what the database's ids reach
PATTERN = rf"^ *(?:{_PAIR})?(?: *, *{_PAIR})* *$"
#: the same in a header, whose outer whitespace HTTP drops (and clients refuse to send)
HEADER_PATTERN = rf"^(?:{_PAIR}(?: *, *{_PAIR})*)?$"
_POSITION = re.compile(PATTERN)


def format_position(position: Mapping[str, int]) -> str:
    return ",".join(f"{kind}={value}" for kind, value in position.items())


def parse_position(text: str, kinds: tuple[str, ...], *, param: str = HEADER) -> dict[str, int]:
    """Positions by kind; unknown kinds are ignored (a newer server's ids stay valid
    for an older one). 422 ``invalid_value`` naming ``param`` when malformed."""
    if not _POSITION.match(text):
        raise InvalidRequest(
            f"{param}: expected kind=number pairs separated by commas "
            f"(kinds: {', '.join(kinds)}), got {text[:100]!r}",
            param=param,
            code="invalid_value",
        )
    position: dict[str, int] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        kind, _, value = part.partition("=")
        if kind in kinds:
            position[kind] = int(value)
    return position
