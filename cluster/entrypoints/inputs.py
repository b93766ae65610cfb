"""The inputs of one `generate` or `batch` as the command line gave them: strings, paths as typed,
and the folder they are relative to. The direct path and the warm cluster's front door turn them
into a run the same way (`prepare_generate`, `prepare_batch`), so an input means one thing
whichever way it goes. The front door's client sends them as JSON: this module imports nothing
heavy until a `prepare_*` runs.

`raw` holds every request input by name (the Action's names, dashes as underscores), so an input
added to the request passes through the front door without a change here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class GenerateInputs:
    raw: dict[str, str | None]  # the request's inputs, validated by cluster.planning.request
    cwd: str  # the caller's working directory: what relative paths (folder, config, files) mean
    limits_file: str | None = None
    limit_overrides: dict[str, str | None] = field(default_factory=dict)
    history_db: str | None = None

    def as_message(self) -> dict:
        return asdict(self)

    @classmethod
    def from_message(cls, message: dict) -> GenerateInputs:
        return cls(**message)


@dataclass
class BatchInputs:
    manifest: str
    cwd: str
    entries_at_once: str = "2"
    budget_usd: str | None = None
    config: str | None = None
    limits_file: str | None = None
    scorer: str | None = None
    history_db: str | None = None

    def as_message(self) -> dict:
        return asdict(self)

    @classmethod
    def from_message(cls, message: dict) -> BatchInputs:
        return cls(**message)


def resolve(value: str | None, cwd: str) -> Path | None:
    """A path as typed, made absolute against the caller's folder (None stays None)."""
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(cwd) / path


def prepare_generate(inputs: GenerateInputs):
    """(request, registry, limits, history) for `inputs`, or the ImageGenError bad input raises."""
    from cluster.observability.history import History
    from cluster.planning.limits import load_limits
    from cluster.planning.request import parse_request
    from models.registry import load_registry

    registry = load_registry(resolve(inputs.raw.get("config"), inputs.cwd))
    limits = load_limits(resolve(inputs.limits_file, inputs.cwd)).with_overrides(inputs.limit_overrides)
    raw = {**inputs.raw, "config": None}  # already used to load the registry
    if raw.get("max_parallel") is None:
        raw["max_parallel"] = str(limits.perf.max_concurrent_generations)
    request = parse_request(raw, registry, cwd=Path(inputs.cwd))
    return request, registry, limits, History(resolve(inputs.history_db, inputs.cwd))


def positive_int(value: str, flag: str) -> int:
    from cluster.errors import ImageGenError

    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ImageGenError("IMG_011", f"{flag} {value!r} must be a whole number >= 1.")
    return number


@dataclass
class PreparedBatch:
    entries: list
    registry: object
    limits: object
    at_once: int
    budget: float | None
    history: object


def prepare_batch(inputs: BatchInputs) -> PreparedBatch:
    """The manifest's entries (each validated on its own) and what the batch shares."""
    from cluster.entrypoints.batch import build_entries
    from cluster.observability.history import History
    from cluster.planning.limits import load_limits
    from cluster.planning.request import parse_budget
    from models.registry import load_registry

    registry = load_registry(resolve(inputs.config, inputs.cwd))
    limits = load_limits(resolve(inputs.limits_file, inputs.cwd))
    at_once = positive_int(inputs.entries_at_once, "--entries-at-once")
    budget = parse_budget(inputs.budget_usd)
    entries = build_entries(resolve(inputs.manifest, inputs.cwd), registry, {"scorer": inputs.scorer},
                            cwd=Path(inputs.cwd))
    return PreparedBatch(entries, registry, limits, at_once, budget, History(resolve(inputs.history_db, inputs.cwd)))
