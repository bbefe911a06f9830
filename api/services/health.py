"""Readiness: can this process reach everything a request needs?"""

from __future__ import annotations

import os

from celery import Celery
from sqlalchemy import Engine, text

from core.settings import Settings
from core.storage import ObjectStore

BROKER_TIMEOUT_S = 2.0


def check_database(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def check_broker(celery: Celery, settings: Settings) -> None:
    if settings.is_embedded_broker:
        # The filesystem transport "connects" to anything; check the folder instead.
        folder = settings.broker_folder / "queue"
        if not os.access(folder, os.W_OK):
            raise OSError(f"broker folder {folder} is not writable")
        return
    with celery.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_S)


def readiness(engine: Engine, celery: Celery, store: ObjectStore, settings: Settings) -> dict:
    checks = {
        "database": lambda: check_database(engine),
        "broker": lambda: check_broker(celery, settings),
        "storage": store.ping,
    }
    components = {}
    for name, check in checks.items():
        try:
            check()
            components[name] = {"status": "ok"}
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none raised
            components[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    ready = all(item["status"] == "ok" for item in components.values())
    return {"status": "ok" if ready else "unavailable", "components": components}
