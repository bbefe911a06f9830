"""Rich progress bars and a JSONL log for local runs (the CLI's pipeline reporter)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def print_next_steps(target: Console, summary: dict) -> None:
    """The report's ``next_steps`` (what to try when the target was not met), one line
    each with the spec fields it means."""
    for step in summary.get("next_steps") or []:
        change = f" [dim]{escape(json.dumps(step['spec']))}[/]" if step["spec"] else ""
        target.print(f"  next: {escape(step['text'])}{change}")


def make_progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class CliReporter:
    """Shows phases as log lines and training steps as a bar; appends every step to
    ``metrics.jsonl`` and every event to ``events.jsonl`` in the output folder."""

    def __init__(self, progress: Progress, out_dir: Path):
        self.progress = progress
        self.task = None
        out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics = open(out_dir / "metrics.jsonl", "w")
        self.events = open(out_dir / "events.jsonl", "w")

    def event(self, kind: str, message: str, **data) -> None:
        self.progress.console.log(f"[cyan]{message}[/] {data if data else ''}")
        self.events.write(json.dumps({"type": kind, "message": message, "data": data}) + "\n")
        self.events.flush()

    def step(self, metrics) -> None:
        if self.task is None:
            self.task = self.progress.add_task("unlearning", total=metrics.total_steps, info="")
        info = f"loss {metrics.loss:.4f}"
        if metrics.weight_mean is not None:
            info += f"  w {metrics.weight_mean:.3f}"
        self.progress.update(self.task, completed=metrics.step, info=info)
        row = {"step": metrics.step, "epoch": metrics.epoch, "values": metrics.values()}
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()

    def should_cancel(self) -> bool:
        return False

    def should_pause(self) -> bool:
        return False

    def evaluation(self, point: dict) -> None:
        """An evaluation point: one line on the console, one row in metrics.jsonl."""
        verdict = point.get("verdict") or {}
        figures = point.get("metrics") or {}
        shown = ", ".join(
            f"{key} {figures[key]:.3g}"
            for key in ("forget_probability", "holdout_probability", "knowledge_p", "utility_ratio")
            if isinstance(figures.get(key), (int, float))
        )
        self.progress.console.log(
            f"[magenta]step {point['step']}[/] {verdict.get('status', '?')}: {shown}"
        )
        row = {"type": "evaluation", **point}
        self.metrics.write(json.dumps(row, default=str) + "\n")
        self.metrics.flush()

    def state_saved(self, folder, step: int) -> None:
        pass

    def close(self) -> None:
        self.metrics.close()
        self.events.close()
