"""Where the bundled configs/*.yaml are: beside the packages in a source checkout (editable
install), or under {prefix}/share/kamui-multi-image/configs in a regular install."""

from __future__ import annotations

import sys
from pathlib import Path

SOURCE_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
INSTALLED_CONFIGS = Path(sys.prefix) / "share" / "kamui-multi-image" / "configs"


def bundled_config(name: str) -> Path:
    source = SOURCE_CONFIGS / name
    return source if source.is_file() else INSTALLED_CONFIGS / name
