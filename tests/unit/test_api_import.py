"""The web process stays light: importing the app and building it loads no torch or
transformers, and opens or creates nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
from api.main import create_app
from core.settings import Settings
app = create_app(Settings(_env_file=None, home="home"))
document = app.openapi()
body = document["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
heavy = sorted(name for name in ("torch", "transformers", "peft", "accelerate") if name in sys.modules)
print(json.dumps({
    "heavy": heavy,
    "jobs_route": "/v1/jobs/{job_id}" in document["paths"],
    "job_body": body["schema"]["$ref"],
    "spec_documented": "hyperparameters" in document["components"]["schemas"]["JobSpec"]["properties"],
}))
"""


def test_building_the_app_imports_no_ml_framework_and_touches_no_disk(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "heavy": [],
        "jobs_route": True,
        "job_body": "#/components/schemas/JobSpec",
        "spec_documented": True,
    }
    assert list(tmp_path.iterdir()) == []  # no database, store or broker folder yet
