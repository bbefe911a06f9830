"""What every fault trial checks about a job once it ended."""

from __future__ import annotations

import hashlib
import json


def started_attempts(events: list[dict]) -> list[int]:
    return [
        e["data"]["attempt"]
        for e in events
        if e["type"] == "status" and e["data"].get("status") == "running"
    ]


def check_published_once(stack, job_id: str) -> dict:
    """Exactly one published checkpoint set (``final``; beside it ``last`` when the
    last evaluation point was not the one chosen), every file's sha256 as listed, and
    each manifest's own list of sums matching its files. Returns the final one."""
    http = stack.http
    checkpoints = http.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    names = sorted(c["name"] for c in checkpoints)
    assert names in (["final"], ["final", "last"]), names
    for checkpoint in checkpoints:
        _verify_files(http, job_id, checkpoint)
    return next(c for c in checkpoints if c["name"] == "final")


def _verify_files(http, job_id: str, checkpoint: dict) -> None:
    contents = {}
    for entry in checkpoint["files"]:
        response = http.get(
            f"/v1/jobs/{job_id}/checkpoints/{checkpoint['id']}/files/{entry['path']}"
        )
        assert response.status_code == 200, (entry, response.text)
        assert hashlib.sha256(response.content).hexdigest() == entry["sha256"], entry["path"]
        contents[entry["path"]] = response.content
    assert hashlib.sha256(contents["manifest.json"]).hexdigest() == checkpoint["manifest_sha256"]
    manifest = json.loads(contents["manifest.json"])
    for item in manifest["files"]:
        assert hashlib.sha256(contents[item["path"]]).hexdigest() == item["sha256"], item


def check_one_clean_run_of_metrics(stack, job_id: str, total_steps: int) -> None:
    """Steps 1..total once each: a second attempt training at the same time as the first
    (or a retry keeping the killed attempt's rows) would leave repeated steps."""
    rows, after = [], None
    while True:
        params = {"limit": 1000, **({"after_step": after} if after is not None else {})}
        page = stack.http.get(f"/v1/jobs/{job_id}/metrics", params=params).json()
        rows += page["data"]
        if not page["has_more"]:
            break
        after = page["last_step"]
    assert [row["step"] for row in rows] == list(range(1, total_steps + 1))


def check_nothing_stuck(stack) -> None:
    for status in ("running", "cancelling"):
        stuck = stack.http.get("/v1/jobs", params={"status": status}).json()["data"]
        assert stuck == [], [(job["id"], job["status"]) for job in stuck]
