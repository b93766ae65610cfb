"""Where the bundled configs/*.yaml are: beside the packages in a source checkout (editable
install), or under {prefix}/share/kamui-multi-image/configs in a regular install."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TypeVar

import yaml

from cluster.errors import ImageGenError

T = TypeVar("T")

SOURCE_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
INSTALLED_CONFIGS = Path(sys.prefix) / "share" / "kamui-multi-image" / "configs"


def bundled_config(name: str) -> Path:
    source = SOURCE_CONFIGS / name
    return source if source.is_file() else INSTALLED_CONFIGS / name


# libyaml's parser when PyYAML has it: a config read per request (the front door, the API) costs
# a millisecond or two instead of ten or more in the pure-Python parser
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str):
    """YAML text as Python data, safely (no tags that build objects)."""
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader


def load_config(path: str | Path | None, default: Path, what: str, build: Callable[[dict], T]) -> T:
    """`path` (else the bundled `default`) read as a YAML mapping and built into its typed spec by
    `build`, which raises ValueError (pydantic's ValidationError is one) for what it refuses. Any
    failure is IMG_018 naming the file: a bad config never surfaces as a traceback."""
    path = Path(path) if path else default
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
        if not isinstance(raw, dict):
            raise ValueError("the file must hold a mapping")
        return build(raw)
    except FileNotFoundError:
        raise ImageGenError("IMG_018", f"{what} {str(path)!r} does not exist.") from None
    except (OSError, yaml.YAMLError, ValueError, AttributeError, TypeError) as exc:
        raise ImageGenError("IMG_018", f"{what} {str(path)!r}: {' '.join(str(exc).split())[:300]}") from None
