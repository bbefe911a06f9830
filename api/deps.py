"""Typed dependencies: one line each, reused by every router."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Request

from api.auth import ANONYMOUS
from api.database import Database
from api.streams.hub import StreamHub
from core.settings import Settings
from core.storage import ObjectStore

# Every dependency is async: FastAPI runs plain functions in the thread pool, a hop per
# dependency per request for what is an attribute read.


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_database(request: Request) -> Database:
    """For requests that write."""
    return request.app.state.resources.database


async def get_read_database(request: Request) -> Database:
    """For requests that only read: autocommit sessions, one round trip per query."""
    return request.app.state.resources.read_database


async def get_store(request: Request) -> ObjectStore:
    return request.app.state.resources.store


async def get_celery(request: Request) -> Celery:
    return request.app.state.resources.celery


async def get_stream_hub(request: Request) -> StreamHub:
    return request.app.state.stream_hub


async def get_principal(request: Request) -> str:
    """Who is calling: set by BearerAuthMiddleware, ``anonymous`` when auth is off."""
    return getattr(request.state, "principal", ANONYMOUS)


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
ReadDatabaseDep = Annotated[Database, Depends(get_read_database)]
StoreDep = Annotated[ObjectStore, Depends(get_store)]
CeleryDep = Annotated[Celery, Depends(get_celery)]
PrincipalDep = Annotated[str, Depends(get_principal)]
StreamHubDep = Annotated[StreamHub, Depends(get_stream_hub)]
