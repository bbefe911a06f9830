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
    """Exactly one published checkpoint set, every file's sha256 as listed, and the
    manifest's own list of sums matching the files. Returns the listing."""
    http = stack.http
    checkpoints = http.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"]
    assert [c["name"] for c in checkpoints] == ["final"], checkpoints
    checkpoint = checkpoints[0]
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
    return checkpoint


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
