"""The README, the compose file and the examples say what the code does."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from core.settings import Settings
from core.spec import parse_job_spec

REPO = Path(__file__).resolve().parents[2]


def _env_name(field: str) -> str:
    return f"OBLIVIATE_{field.upper()}"


def test_readme_configuration_table_lists_every_setting():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"^\| `(OBLIVIATE_[A-Z0-9_]+)` \|", readme, flags=re.MULTILINE))
    assert documented == {_env_name(field) for field in Settings.model_fields}


def test_compose_only_sets_real_settings():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    known = {_env_name(field) for field in Settings.model_fields}
    for name, service in compose["services"].items():
        for variable in service.get("environment") or {}:
            if variable.startswith("OBLIVIATE_"):
                assert variable in known, f"{name}: {variable} is not a setting"


def test_example_job_specs_are_valid_and_identical():
    from_yaml = yaml.safe_load((REPO / "examples" / "demo-simnpo.yaml").read_text())
    from_json = json.loads((REPO / "examples" / "demo-simnpo.json").read_text())
    assert from_yaml == from_json
    spec = parse_job_spec(from_json)
    assert spec.method == "simnpo" and spec.evaluation.oracle == "demo-retrain"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "make test" in readme and ci.strip().endswith("make test")


def test_compose_workers_own_exactly_the_devices_they_reserve():
    """Each GPU worker service pins its slots to as many devices as it reserves."""
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    workers = 0
    for name, service in compose["services"].items():
        reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
        devices = [d for entry in reservations.get("devices", []) for d in entry["device_ids"]]
        if not devices:
            continue
        workers += 1
        environment = service.get("environment") or {}
        settings = Settings(
            _env_file=None,
            worker_gpus=environment.get("OBLIVIATE_WORKER_GPUS", ""),
            worker_gpus_per_job=environment.get("OBLIVIATE_WORKER_GPUS_PER_JOB", 1),
        )
        assert len(settings.worker_gpus or ["0"]) == len(devices), name
    assert workers >= 4
