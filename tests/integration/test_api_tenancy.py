"""Tenants, roles and keys (issue 9, part 1), through the real app on SQLite and
Postgres: every route of the OpenAPI document (and of /openai/v1) is walked by two
tenants' keys of every role."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from api.auth import SESSION_COOKIE
from api.authz import OWNED_PARAMETERS, PUBLIC, RULES
from api.main import create_app
from core.db import keys as key_repo
from core.db.engine import make_engine, make_session_factory
from core.tenancy import ROLE_PERMISSIONS, ROLES, roles_with
from tests.fixtures.api import QA_RECORDS, jsonl, make_settings

TENANTS = ("acme", "globex")
NOT_FOUND_CODES = {owned.code for owned in OWNED_PARAMETERS.values()} | {
    "model_not_found",
    "key_not_found",
}
_names = itertools.count()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_key(database_url: str, tenant: str, role: str) -> tuple[str, str]:
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            row, secret = key_repo.create_key(session, tenant=tenant, role=role)
            session.commit()
            return row.id, secret
    finally:
        engine.dispose()


@pytest.fixture
def tenancy(tmp_path, database_url):
    """An app with keys of every role in two tenants, and acme's objects."""
    keys = {
        (tenant, role): make_key(database_url, tenant, role)[1]
        for tenant in TENANTS
        for role in ROLES
    }
    settings = make_settings(tmp_path / "home", database_url, webhook_allow_private=True)
    with TestClient(create_app(settings)) as client:
        admin = bearer(keys["acme", "admin"])
        dataset = client.post(
            "/v1/datasets", files={"file": ("f.jsonl", jsonl(QA_RECORDS))}, headers=admin
        ).json()["id"]
        model = client.post(
            "/v1/models", json={"name": "acme-model", "source": "org/acme"}, headers=admin
        ).json()["name"]
        request = client.post(
            "/v1/deletion-requests", json={"subject": "Jane Roe"}, headers=admin
        ).json()["id"]
        job = client.post("/v1/jobs", json=job_body(dataset, model), headers=admin).json()["id"]
        webhook = client.post(
            "/v1/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "events": ["job.succeeded"]},
            headers=admin,
        ).json()["id"]
        spare_key = client.post("/v1/keys", json={"role": "viewer"}, headers=admin).json()["id"]
        objects = {
            "dataset_id": dataset,
            "job_id": job,
            "deletion_request_id": request,
            "webhook_id": webhook,
            "key_id": spare_key,
            "model": model,
        }
        yield client, keys, objects


def job_body(dataset: str, model: str) -> dict:
    return {
        "model": model,
        "forget": dataset,
        "method": "npo",
        "hyperparameters": {"retain_loss": "none"},
    }


def operations(client) -> list[tuple[str, str]]:
    """Every operation of the OpenAPI document, and the OpenAI-compatible routes (which
    OpenAI's reference documents, not ours)."""
    found = [
        (method.upper(), path)
        for path, item in client.get("/openapi.json").json()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]
    found += [(method, path) for method, path in RULES if path.startswith("/openai/")]
    return found


def fill(path: str, objects: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        if name == "name":
            if path.startswith(("/v1/models", "/openai/v1/models")):
                return objects["model"]
            return "npo" if path.startswith("/v1/methods") else "report.json"
        return {"checkpoint_id": "final", "path": "config.json"}.get(name) or objects[name]

    return re.sub(r"\{(\w+)\}", value, path)


def call(client, method: str, path: str, objects: dict, headers: dict):
    url = fill(path, objects)
    if method == "GET":
        return client.get(url, headers=headers)
    if method == "DELETE":
        return client.delete(url, headers=headers)
    bodies = {
        "/v1/jobs": job_body(objects["dataset_id"], objects["model"]),
        "/v1/models": {"name": f"m-{next(_names)}", "source": "org/x"},
        "/v1/deletion-requests": {"subject": "John Doe"},
        "/v1/webhooks": {"url": "http://127.0.0.1:9/h", "events": ["job.failed"]},
        "/v1/keys": {"role": "viewer"},
        "/openai/v1/chat/completions": {
            "model": objects["model"],
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 1,
        },
        "/openai/v1/completions": {"model": objects["model"], "prompt": "hi", "max_tokens": 1},
    }
    if path == "/v1/datasets":
        files = {"file": ("g.jsonl", jsonl(QA_RECORDS))}
        return client.post(url, files=files, headers=headers)
    return client.post(url, json=bodies.get(path, {}), headers=headers)


def error_code(response) -> str | None:
    try:
        return response.json()["error"]["code"]
    except Exception:  # noqa: BLE001 - not an error body
        return None


def test_every_route_has_an_access_rule(tenancy):
    client, _, _ = tenancy
    routes = set(operations(client))
    assert routes - set(RULES) == set(), "routes without an access rule (api/authz.py)"
    stale = {rule for rule in RULES if rule not in routes and not rule[1].endswith(".html")}
    assert stale == set(), "access rules of routes that do not exist"


def test_every_route_with_two_tenants_and_every_role(tenancy):
    client, keys, objects = tenancy
    acme_ids = [value for name, value in objects.items() if name != "model"]
    for method, path in operations(client):
        permission = RULES[method, path]
        if permission == PUBLIC:
            continue
        names_acme_object = any(
            f"{{{name}}}" in path for name in (*OWNED_PARAMETERS, "key_id")
        ) or path.startswith(("/v1/models/", "/openai/v1/models/"))
        for (tenant, role), key in keys.items():
            where = f"{tenant} {role}: {method} {path}"
            allowed = permission in ROLE_PERMISSIONS[role]
            if path.endswith("/stream") and allowed and (tenant == "acme" or not names_acme_object):
                continue  # a stream that is let in does not end; its scoping: test below
            response = call(client, method, path, objects, bearer(key))
            code = error_code(response)
            assert response.status_code < 500 or path.startswith("/openai/v1/"), where
            if permission not in ROLE_PERMISSIONS[role]:
                assert (response.status_code, code) == (403, "forbidden"), where
                message = response.json()["error"]["message"]
                assert any(needed in message for needed in roles_with(permission)), message
                continue
            assert response.status_code not in (401, 403), f"{where}: {response.text}"
            if tenant == "acme":
                assert code not in NOT_FOUND_CODES, f"{where}: {response.text}"
            elif names_acme_object:
                assert response.status_code == 404 and code in NOT_FOUND_CODES, (
                    f"{where}: {response.status_code} {response.text}"
                )
            elif method == "GET":
                assert not any(acme_id in response.text for acme_id in acme_ids), where
            elif path == "/v1/jobs":  # another tenant's dataset and model are unknown
                assert response.status_code in (404, 422), f"{where}: {response.text}"


def test_unknown_and_revoked_keys_get_401_and_the_admin_manages_keys(tenancy):
    client, keys, _ = tenancy
    assert error_code(client.get("/v1/jobs", headers=bearer("obl_nope"))) == "unauthorized"
    admin = bearer(keys["acme", "admin"])
    made = client.post("/v1/keys", json={"role": "submitter", "name": "ci"}, headers=admin)
    assert made.status_code == 201
    new_key, key_id = made.json()["key"], made.json()["id"]
    assert new_key.startswith(made.json()["prefix"])
    assert client.get("/v1/jobs", headers=bearer(new_key)).status_code == 200
    listed = client.get("/v1/keys", headers=admin).json()["data"]
    assert key_id in [key["id"] for key in listed]
    assert all("key" not in key and key["tenant"] == "acme" for key in listed)
    assert client.get("/v1/keys", headers=bearer(keys["globex", "admin"])).json()["data"]
    assert key_id not in client.get("/v1/keys", headers=bearer(keys["globex", "admin"])).text
    assert client.delete(f"/v1/keys/{key_id}", headers=admin).json()["revoked_at"]
    assert client.get("/v1/jobs", headers=bearer(new_key)).status_code == 401
    bad = client.post("/v1/keys", json={"role": "root"}, headers=admin)
    assert (bad.status_code, error_code(bad)) == (422, "invalid_value")
    assert bad.json()["error"]["param"] == "role"


def test_keys_create_cli_prints_the_key_alone_on_its_last_line(tmp_path, database_url, monkeypatch):
    from cli.main import app as cli

    monkeypatch.setenv("OBLIVIATE_DATABASE_URL", database_url)
    monkeypatch.setenv("OBLIVIATE_HOME", str(tmp_path / "home"))
    from core.settings import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            cli, ["keys", "create", "--tenant", "initech", "--role", "viewer"]
        )
        bad = CliRunner().invoke(
            cli, ["keys", "create", "--tenant", "Bad Name", "--role", "viewer"]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    key = result.output.strip().splitlines()[-1]
    assert re.fullmatch(r"obl_[A-Za-z0-9_-]{43}", key)
    assert bad.exit_code == 2 and "invalid_tenant" in bad.output
    settings = make_settings(tmp_path / "home", database_url)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs").status_code == 401  # a key exists: no longer open
        assert client.get("/v1/jobs", headers=bearer(key)).status_code == 200
        denied = client.post("/v1/deletion-requests", json={"subject": "x"}, headers=bearer(key))
        assert denied.status_code == 403
        assert "submitter or admin" in denied.json()["error"]["message"]


def test_a_service_without_keys_is_open_until_the_first_key(tmp_path, database_url):
    settings = make_settings(tmp_path / "home", database_url)
    with TestClient(create_app(settings)) as client:
        client.app.state.keyring.ttl_s = 0  # see a key made elsewhere at once
        assert client.get("/v1/jobs").status_code == 200
        _, key = make_key(database_url, "acme", "viewer")
        assert client.get("/v1/jobs").status_code == 401
        assert client.get("/v1/jobs", headers=bearer(key)).status_code == 200


def test_dashboard_pages_show_only_the_signed_in_tenants_objects(tenancy):
    client, keys, objects = tenancy
    job = objects["job_id"]
    for tenant, expected in (("acme", True), ("globex", False)):
        client.cookies.set(SESSION_COOKIE, keys[tenant, "viewer"])
        assert (job in client.get("/").text) is expected, tenant
        assert client.get(f"/jobs/{job}").status_code == (200 if expected else 404), tenant
    # The audit page needs a role that may read the audit log.
    denied = client.get("/audit")
    assert denied.status_code == 403 and "auditor or admin" in denied.text
    assert denied.headers["content-type"].startswith("text/html")
    client.cookies.set(SESSION_COOKIE, keys["globex", "auditor"])
    audit = client.get("/audit")
    assert audit.status_code == 200 and job not in audit.text
    client.cookies.clear()


def test_webhooks_are_sent_their_own_tenants_events_only(db_session):
    from core.db import webhooks
    from core.tenancy import tenant_bound

    hooks = {}
    for tenant in TENANTS:
        with tenant_bound(tenant):
            hooks[tenant] = webhooks.create_webhook(
                db_session,
                url="https://example.com/h",
                events=["job.failed"],
                secret="s",
                description=None,
            ).id
    sent = webhooks.emit(db_session, "job.failed", {"job": {}}, tenant="acme")
    rows = webhooks.list_deliveries(db_session, hooks["acme"], after=None, limit=10).items
    assert [row.id for row in rows] == sent and len(sent) == 1
    assert webhooks.list_deliveries(db_session, hooks["globex"], after=None, limit=10).items == []


def test_a_stream_of_every_job_sends_only_the_callers_tenants_jobs():
    from api.services.streams import StreamItem
    from api.streams.hub import Subscription

    mine = StreamItem("event", "job_a", 1, "{}", tenant="acme")
    theirs = StreamItem("event", "job_b", 2, "{}", tenant="globex")
    scoped = Subscription(job_id=None, kinds=frozenset({"event"}), position={}, tenant="acme")
    assert scoped.accepts(mine) and not scoped.accepts(theirs)
    scoped.offer(theirs)
    assert scoped.queue.empty()
    unscoped = Subscription(job_id=None, kinds=frozenset({"event"}), position={})
    assert unscoped.accepts(theirs)


def test_every_reference_in_the_openapi_document_resolves(tenancy):
    """A body declared by hand (``json_body``) must have its schema in the components,
    or ReDoc fails to render the whole reference."""
    client, _, _ = tenancy
    document = client.get("/openapi.json").json()
    text = json.dumps(document)
    names = set(re.findall(r'"#/components/schemas/([^"]+)"', text))
    assert names - set(document["components"]["schemas"]) == set()
