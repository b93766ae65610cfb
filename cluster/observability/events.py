"""Run events: one stream that the progress display, logs and metrics all read.

An event is a kind plus plain fields. Sinks are callables; they must not raise into the
scheduler, so `Events.emit` shields the run from a broken sink.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

Sink = Callable[[dict[str, Any]], None]


class Events:
    def __init__(self, *sinks: Sink):
        self.sinks: list[Sink] = list(sinks)
        self.history: list[dict[str, Any]] = []

    def emit(self, kind: str, **fields: Any) -> None:
        event = {"event": kind, "time": time.time(), **fields}
        self.history.append(event)
        for sink in list(self.sinks):
            try:
                sink(event)
            except Exception:  # a display problem must never stop a generation run
                self.sinks.remove(sink)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.history if e["event"] == kind]


def plain_lines(stream: TextIO | None = None) -> Sink:
    """One readable line per event, for CI logs (no TTY)."""

    def sink(event: dict[str, Any]) -> None:
        out = stream or sys.stderr
        fields = " ".join(
            f"{k}={_short(v)}" for k, v in event.items() if k not in ("event", "time") and v is not None
        )
        print(f"[multi-image] {event['event']} {fields}".rstrip(), file=out, flush=True)

    return sink


def _short(value: Any) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."
