"""The FastAPI application factory.

``uvicorn --factory api.main:create_app`` (settings from ``OBLIVIATE_*``). Importing
this module opens nothing: the database engine, object store and Celery app are
created by the lifespan, once per process, after the migrations ran.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from api.auth import BearerAuthMiddleware
from api.authz import OwnerCache, authorize
from api.dashboard.signin import SignInRequired, redirect_to_sign_in
from api.errors import install_error_handlers
from api.keyring import Keyring
from api.metrics import MetricsMiddleware, RequestMetrics
from api.openapi import install_openapi
from api.request_log import RequestLogMiddleware
from api.routers import (
    audit,
    dashboard,
    datasets,
    deletion_requests,
    docs,
    health,
    job_spec,
    jobs,
    keys,
    methods,
    models,
    openai_compat,
    streams,
    webhooks,
    well_known,
)
from api.schemas.common import ErrorResponse
from api.services.openai_compat import InferenceProxy
from api.state import Resources
from api.streams.hub import StreamHub
from core.logs import configure_logging
from core.reaper import ReaperThread
from core.settings import Settings, get_settings

#: every router of /v1 and /openai/v1: the caller's role and tenant are checked
AUTHORIZED = [Depends(authorize)]

ERROR_RESPONSES = {
    status: {"model": ErrorResponse} for status in (400, 401, 403, 404, 409, 413, 422)
}


def create_app(settings: Settings | None = None, *, run_migrations: bool = True) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_format, settings.log_level)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if run_migrations:
            from core.db.migrate import upgrade

            await run_in_threadpool(upgrade, settings.database_url)
        resources = await run_in_threadpool(Resources.open, settings)
        app.state.resources = resources
        # Every API process also watches for dead workers and lost messages, and shreds
        # forget sets whose retention ran out.
        reaper = ReaperThread(
            resources.database.session_factory, resources.celery, settings, resources.store
        )
        reaper.start()
        # One poller per process feeds every live stream it serves.
        app.state.stream_hub = StreamHub(
            resources.read_database, poll_interval_s=settings.stream_poll_interval_s
        )
        app.state.stream_hub.start()
        app.state.inference = InferenceProxy(settings)
        try:
            yield
        finally:
            await app.state.stream_hub.stop()
            await app.state.inference.close()
            reaper.stop()
            resources.close()

    app = FastAPI(
        title="Obliviate",
        summary="Machine unlearning jobs for language models.",
        version="0.1.0",
        lifespan=lifespan,
        # Served by api.routers.docs with local files instead of FastAPI's CDN ones.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = RequestMetrics()
    install_error_handlers(app)
    install_openapi(app)
    app.state.keyring = Keyring(settings.api_keys)
    app.state.owner_cache = OwnerCache()
    app.add_middleware(BearerAuthMiddleware, keyring=app.state.keyring)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(RequestLogMiddleware)  # outermost: every response gets its id

    app.include_router(health.router)
    app.include_router(well_known.router)
    # People's pages: the dashboard at /, the API reference at /docs and /redoc.
    app.include_router(dashboard.router)
    app.include_router(docs.router)
    docs.mount_static(app)
    app.add_exception_handler(SignInRequired, redirect_to_sign_in)
    app.add_exception_handler(dashboard.PageError, dashboard.show_page_error)
    # streams before jobs: /v1/jobs/stream must not be read as the job "stream".
    for module in (
        datasets,
        streams,
        jobs,
        methods,
        job_spec,
        models,
        deletion_requests,
        audit,
        webhooks,
        keys,
    ):
        app.include_router(module.router, responses=ERROR_RESPONSES, dependencies=AUTHORIZED)
    # OpenAI-compatible inference: an OpenAI client's base_url is http://HOST:PORT/openai/v1.
    # OpenAI's API reference documents it (and docs/inference.md what we support), not ours.
    app.include_router(openai_compat.router, include_in_schema=False, dependencies=AUTHORIZED)
    return app
