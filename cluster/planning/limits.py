"""configs/limits.yaml -> `Limits`, with per-run overrides merged in one place."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cluster.config_files import bundled_config, parse_yaml
from cluster.errors import ImageGenError

DEFAULT_LIMITS_FILE = bundled_config("limits.yaml")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def parse_size(value: Any) -> int:
    """'2GB' -> 2_000_000_000, '512MiB' -> 536_870_912, 1000 -> 1000."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size like 2GB or 512MiB")
    number, unit = float(match.group(1)), match.group(2).upper()
    binary = "I" in unit
    prefix = unit.replace("I", "").replace("B", "")
    factor = 1024 ** "KMGT".index(prefix) * 1024 if binary and prefix else _UNITS[prefix]
    return int(number * factor)


class PerformanceLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent_generations: int = Field(3, ge=1, le=64, description="Default of --max-parallel.")
    timeout_per_image: float = Field(300, gt=0, description="Seconds a generation call may run.")
    total_workflow_timeout: float = Field(1800, gt=0, description="Seconds the whole run may take.")
    memory_limit_per_image: int = Field(2 * 10**9, ge=0, description="Host bytes per image of a batch.")
    disk_space_limit: int = Field(10 * 10**9, gt=0, description="Most bytes a run may write.")


class SchedulerLimits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    placement_timeout: float = Field(60, gt=0)
    model_load_timeout: float = Field(1200, gt=0)
    cancel_grace: float = Field(20, ge=0)
    max_attempts: int = Field(3, ge=1, le=10)
    actor_max_restarts: int = Field(3, ge=0)
    backoff_base: float = Field(2.0, ge=0)
    backoff_max: float = Field(60.0, ge=0)
    rate_window_seconds: float = Field(60.0, gt=0, description="The window of requests_per_minute.")
    reduce_count_at: float = Field(0.8, gt=0, le=1, description="Share of total_workflow_timeout after which waiting images are dropped.")
    keep_alive_seconds: float = Field(1800, gt=0, description="Idle seconds after which a warm replica retires.")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    performance_limits: PerformanceLimits = Field(default_factory=PerformanceLimits)
    scheduler: SchedulerLimits = Field(default_factory=SchedulerLimits)

    @property
    def perf(self) -> PerformanceLimits:
        return self.performance_limits

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Limits":
        """Per-run overrides by key name (either section); unknown keys or bad values -> IMG_025."""
        perf = self.performance_limits.model_dump()
        sched = self.scheduler.model_dump()
        for key, value in overrides.items():
            if value is None:
                continue
            if key in perf:
                perf[key] = _convert(key, value)
            elif key in sched:
                sched[key] = value
            else:
                raise ImageGenError("IMG_025", f"unknown limit {key!r}; known: {', '.join([*perf, *sched])}.")
        try:
            return Limits(performance_limits=PerformanceLimits(**perf), scheduler=SchedulerLimits(**sched))
        except ValidationError as exc:
            err = exc.errors()[0]
            raise ImageGenError("IMG_025", f"limit {err['loc'][-1]!r}: {err['msg']}.") from None


def _convert(key: str, value: Any) -> Any:
    if key in ("memory_limit_per_image", "disk_space_limit"):
        try:
            return parse_size(value)
        except ValueError as exc:
            raise ImageGenError("IMG_025", f"limit {key}: {exc}.") from None
    return value


def load_limits(path: str | Path | None = None) -> Limits:
    path = Path(path) if path else DEFAULT_LIMITS_FILE
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ImageGenError("IMG_018", f"limits file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ImageGenError("IMG_018", f"limits file {str(path)!r} cannot be read as YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(raw, dict):
        raise ImageGenError("IMG_018", f"limits file {str(path)!r} must be a mapping.")
    perf = dict(raw.get("performance_limits") or {})
    for key in ("memory_limit_per_image", "disk_space_limit"):
        if key in perf:
            try:
                perf[key] = parse_size(perf[key])
            except ValueError as exc:
                raise ImageGenError("IMG_018", f"{path.name!r}: {key}: {exc}") from None
    try:
        unknown = set(raw) - {"performance_limits", "scheduler"}
        if unknown:
            raise ImageGenError("IMG_018", f"{path.name!r}: unknown section(s) {', '.join(map(repr, sorted(unknown)))}.")
        return Limits(performance_limits=PerformanceLimits(**perf), scheduler=SchedulerLimits(**(raw.get("scheduler") or {})))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ImageGenError("IMG_018", f"{path.name!r}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
