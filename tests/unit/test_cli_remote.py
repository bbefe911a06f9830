"""The CLI's plumbing that needs no service: phase progress written as lines when the
output is a log, and the remote commands' errors when the service cannot be reached."""

from __future__ import annotations

import io

from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner

from cli.main import _phase_reporter, app
from tests.fixtures.services import free_port


def test_demo_phases_are_written_as_lines_into_a_log():
    log = io.StringIO()
    progress = Progress(console=Console(file=log, force_terminal=False))
    report = _phase_reporter(progress)
    with progress:
        for done in range(0, 101, 5):
            report("training target", done, 100)
    lines = [line for line in log.getvalue().splitlines() if line.startswith("demo:")]
    assert lines[0] == "demo: training target 0% (0/100)"
    assert lines[-1] == "demo: training target 100% (100/100)"
    assert len(lines) == 11  # every 10%, once


def test_remote_commands_say_when_the_service_is_unreachable():
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["jobs", "--url", url, "get", "job_01x"])
    assert result.exit_code == 2
    assert "cannot reach the service" in result.output
