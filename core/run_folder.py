"""A job's working folder, and the part of it that lets the job stop and go on.

<workdir>/
  run/                  what a resumed (or continued) run needs; the worker mirrors
    info.json           it to the object store at every evaluation point
    before.json         the original model's full evaluation (computed once)
    state/              the training state (core.training.state) and the monitor's
    points/best.pt      trainable weights of the best evaluation point so far
  checkpoint/           the published model (``final``)
  checkpoint-last/      the last point's model, when another point was published
  report/               report.json, report.html, plots
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN = "run"


@dataclass
class RunFolder:
    workdir: Path

    @property
    def root(self) -> Path:
        return self.workdir / RUN

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def points_dir(self) -> Path:
        return self.root / "points"

    def has_state(self) -> bool:
        from core.training.state import TrainingState

        return TrainingState.exists(self.state_dir)

    def read_json(self, name: str) -> Any | None:
        path = self.root / name
        return json.loads(path.read_text()) if path.is_file() else None

    def write_json(self, name: str, value: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(value))
        tmp.replace(path)
