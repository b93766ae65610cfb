"""How a run shows itself while it works: a live display on a terminal, one plain line per
event in CI logs, JSON lines with --json. All three read the same event stream."""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from cluster.observability.events import Sink, plain_lines

# The Actions runner reads every line of a step's stdout and stderr as a possible workflow command:
# one that starts with `::` (after blanks), or one holding the legacy `##[` prefix anywhere. Its
# line reader also ends a line at a lone carriage return.
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]|##\[")


def one_line(text: object) -> str:
    """`text` made safe to print as (part of) one log line: control characters and line separators
    escaped the way repr writes them, `##[` broken up. A user value can then neither start a line
    of its own nor be read as a workflow command."""
    return _UNSAFE.sub(_escape, str(text))


def _escape(match: re.Match) -> str:
    found = match.group()
    return "#\\x23[" if found == "##[" else found.encode("unicode_escape").decode("ascii")


@dataclass
class ModelProgress:
    total: int = 0
    done: int = 0
    failed: int = 0
    running: int = 0
    state: str = "waiting"
    seconds: list[float] = field(default_factory=list)


class ProgressState:
    """Per-model counts folded from events: done/total, running, ETA."""

    def __init__(self):
        self.models: dict[str, ModelProgress] = {}
        self.started = time.monotonic()
        self.finished: dict | None = None
        self.entries = {"total": 0, "done": 0, "failed": 0, "skipped": 0}  # a batch's entries

    def model(self, name: str) -> ModelProgress:
        return self.models.setdefault(name, ModelProgress())

    def apply(self, event: dict[str, Any]) -> None:
        kind = event["event"]
        if kind == "run_started":
            for name, count in (event.get("planned") or {}).items():
                self.model(name).total = count
        elif kind == "model_loading":
            self.model(event["model"]).state = "loading"
        elif kind == "model_loaded":
            self.model(event["model"]).state = "ready"
        elif kind in ("model_load_failed", "model_unplaceable"):
            self.model(event["model"]).state = f"error {event.get('code')}"
        elif kind == "call_started":
            self.model(event["model"]).running += int(event.get("images", 1))
        elif kind == "image_done":
            progress = self.model(event["model"])
            progress.done += 1
            progress.running = max(0, progress.running - 1)
            progress.seconds.append(float(event.get("seconds") or 0.0))
        elif kind == "call_failed":
            progress = self.model(event["model"])
            progress.running = max(0, progress.running - len(event.get("indices") or [1]))
        elif kind == "image_failed":
            self.model(event["model"]).failed += 1
        elif kind == "image_moved":
            self.model(event["from_model"]).total -= 1
            self.model(event["to_model"]).total += 1
        elif kind == "run_finished" and "entry" not in event:
            self.finished = event
        elif kind == "batch_started":
            self.entries.update(total=event["entries"], skipped=event["skipped"])
        elif kind == "entry_finished":
            self.entries["done" if event.get("status") in ("completed", "partial") else "failed"] += 1
        elif kind == "entry_invalid":
            self.entries["failed"] += 1

    def eta_seconds(self, name: str) -> float | None:
        progress = self.models[name]
        remaining = progress.total - progress.done - progress.failed
        if remaining <= 0:
            return 0.0
        if not progress.done:
            return None
        elapsed = time.monotonic() - self.started
        return elapsed / (progress.done + progress.failed) * remaining


def rich_display(stream: TextIO | None = None):
    """A live table (per model: state, done/total, running, failed, ETA) on a terminal."""
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    state = ProgressState()
    console = Console(file=stream or sys.stderr)
    live = Live(console=console, refresh_per_second=4, transient=False)

    def render() -> Table:
        entries = state.entries
        caption = (f"batch: {entries['done'] + entries['skipped']}/{entries['total']} entries done "
                   f"({entries['skipped']} skipped), {entries['failed']} failed") if entries["total"] else None
        table = Table(title="multi-image", caption=caption, expand=False)
        for column in ("model", "state", "done", "running", "failed", "ETA"):
            table.add_column(column, justify="left" if column in ("model", "state") else "right")
        for name, progress in state.models.items():
            eta = state.eta_seconds(name)
            table.add_row(name, progress.state, f"{progress.done}/{progress.total}", str(progress.running),
                          str(progress.failed), "—" if eta is None else f"{eta:.0f}s")
        return table

    def sink(event: dict[str, Any]) -> None:
        state.apply(event)
        kind = event["event"]
        if kind in ("run_started", "batch_started") and not live.is_started:
            live.start()
        live.update(render(), refresh=True)
        # one run ends the display; a batch's runs (tagged with their entry) end with the batch
        if kind == "batch_finished" or (kind == "run_finished" and "entry" not in event):
            live.stop()

    sink.state = state  # type: ignore[attr-defined]
    sink.live = live  # type: ignore[attr-defined]
    return sink


def json_lines(stream: TextIO | None = None) -> Sink:
    """One JSON object per event on stdout, for machines."""

    def sink(event: dict[str, Any]) -> None:
        # json.dumps escapes control characters itself; "\u005b" is the same JSON string as "["
        line = json.dumps(event, default=str, ensure_ascii=False).replace("##[", "##\\u005b")
        print(line, file=stream or sys.stdout, flush=True)

    return sink


def choose_sinks(json_mode: bool, stream: TextIO | None = None, out: TextIO | None = None) -> list[Sink]:
    """JSON lines to `out` (stdout), else a live display on a terminal, else plain lines."""
    if json_mode:
        return [json_lines(out)]
    err = stream or sys.stderr
    if err.isatty():
        return [rich_display(err)]
    return [_one_line_fields(plain_lines(err))]


def _one_line_fields(sink: Sink) -> Sink:
    """Plain lines go to CI logs, where an event's fields (a model id from --config, a message
    from a backend) are printed as they are: pass them through `one_line` first."""

    def escaped(event: dict[str, Any]) -> None:
        sink({k: v if v is None or k in ("event", "time") else one_line(v) for k, v in event.items()})

    return escaped
