"""GPU slots: what each worker child sees, and the worker command line for a layout."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from cli.serve import worker_command, worker_environment
from core.settings import Settings
from worker.devices import check_concurrency, pin_to_slot


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


def test_devices_split_into_slots():
    assert settings(worker_gpus="0-3").worker_gpu_slots == [["0"], ["1"], ["2"], ["3"]]
    two = settings(worker_gpus="0,1,2,3", worker_gpus_per_job=2)
    assert two.worker_gpu_slots == [["0", "1"], ["2", "3"]]
    uuids = settings(worker_gpus="GPU-aa,GPU-bb")
    assert uuids.worker_gpu_slots == [["GPU-aa"], ["GPU-bb"]]
    assert settings().worker_gpu_slots == []
    for bad in ({"worker_gpus": "0-2", "worker_gpus_per_job": 2}, {"worker_gpus": "0,0"}):
        with pytest.raises(ValidationError):
            settings(**bad)


def test_each_child_sees_only_its_slot(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    layout = settings(worker_gpus="4-7", worker_gpus_per_job=2)
    assert pin_to_slot(layout, index=1) == ["6", "7"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "6,7"
    assert pin_to_slot(layout, index=0) == ["4", "5"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "4,5"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert pin_to_slot(settings(), index=0) is None  # no layout: nothing pinned
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_one_child_per_slot():
    layout = settings(worker_gpus="0-3", worker_gpus_per_job=2)
    check_concurrency(layout, 2)
    with pytest.raises(RuntimeError, match="2 GPU slot"):
        check_concurrency(layout, 4)
    check_concurrency(settings(), 3)  # no layout: any concurrency


def _option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_the_worker_command_serves_the_queue_of_its_slot_size():
    layout = settings(worker_gpus="0-7", worker_gpus_per_job=4)
    command = worker_command(layout)
    assert _option(command, "--concurrency") == "2"
    assert _option(command, "--queues") == "obliviate.gpus-4"
    smaller = worker_command(
        settings(worker_gpus="0-3", worker_gpus_per_job=2, worker_accept_smaller=True)
    )
    assert _option(smaller, "--queues") == "obliviate,obliviate.gpus-2"
    plain = worker_command(settings(), concurrency=3)
    assert (_option(plain, "--queues"), _option(plain, "--concurrency")) == ("obliviate", "3")
    env = worker_environment(layout)
    assert env["OBLIVIATE_WORKER_GPUS"] == "0,1,2,3,4,5,6,7"
    assert env["OBLIVIATE_WORKER_GPUS_PER_JOB"] == "4"


def test_the_worker_command_refuses_devices_that_do_not_split_into_slots():
    from typer.testing import CliRunner

    from cli.main import app

    result = CliRunner().invoke(app, ["worker", "--gpus", "0-2", "--gpus-per-job", "2"])
    assert result.exit_code == 2
    assert "do not split into slots" in result.output
