"""Key files made at first use (the certificate signing key, the dataset master key)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def create_once(path: Path, make: Callable[[], bytes]) -> None:
    """Write ``make()`` to ``path``, readable by the owner only, unless it exists.
    O_EXCL: of two processes starting together the first key stays, not two."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    content = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)
