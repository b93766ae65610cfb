"""Step outputs appended to $GITHUB_OUTPUT, in the two forms the runner reads.

`name=value` for one-line values; `name<<DELIMITER` blocks for anything that may hold a
newline, with a random delimiter that cannot occur in the value (so a prompt cannot
end the block early and inject outputs of its own).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path

OUTPUT_NAMES = (
    "image-completed",
    "google-image-url",
    "used-model",
    "images-completed",
    "image-urls",
    "models-used",
    "generation-report",
    "quality-scores",
    "primary-image-index",
)


def format_outputs(outputs: Mapping[str, str]) -> str:
    lines = []
    for name, value in outputs.items():
        value = str(value)
        if "\n" in value or "\r" in value:
            delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
            while delimiter in value:
                delimiter = f"ghadelimiter_{secrets.token_hex(16)}"
            lines.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
        else:
            lines.append(f"{name}={value}\n")
    return "".join(lines)


def append_outputs(path: Path, outputs: Mapping[str, str]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(format_outputs(outputs))


def parse_outputs(text: str) -> dict[str, str]:
    """The runner's reading of a GITHUB_OUTPUT file (used by tests and the Action's tests)."""
    result: dict[str, str] = {}
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            i += 1
            while i < len(lines) and lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise ValueError(f"output {name!r}: delimiter never closed")
            result[name] = "\n".join(body)
        else:
            name, value = line.split("=", 1)
            result[name] = value
        i += 1
    return result
