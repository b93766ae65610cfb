"""`multi-image batch MANIFEST`: many requests, scheduled together on shared warm replicas.

A manifest is JSON Lines (.jsonl/.json: one object per line) or YAML (.yaml/.yml: a list,
or a mapping with `entries:`). Each entry takes the Action's input names (`image-prompt`,
`folder-name`, `image-count`, `models`, `adapters`, ...; dashes or underscores) plus an `id`;
without `folder-name` an entry writes to `{manifest name}-out/{id}`. Manifest-wide `defaults`
(e.g. the adapters that give a whole video one look) apply to every entry that does not set them.

Entries run a few at a time, each as its own run (own scheduler, own `--max-parallel`),
all on the same resident replicas, so one model load serves the whole batch and every
GPU stays busy. One bad entry (invalid input, failed generation) never stops the others.
Rerunning the manifest skips entries whose folder holds a complete, valid report for the
same request, and redoes the rest.
"""

from __future__ import annotations

import contextvars
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cluster import env
from cluster.config_files import parse_yaml
from cluster.errors import ImageGenError
from cluster.observability.events import Events
from cluster.observability.history import History
from cluster.pipeline.context import RunContext
from cluster.pipeline.run import run_request
from cluster.planning.limits import Limits
from cluster.planning.costs.money import format_usd
from cluster.planning.request import GenerationRequest, parse_request
from models.registry import Registry

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
# Request fields a finished report must match for its entry to count as done.
RESUME_FIELDS = ("image_prompt", "image_count", "models", "generation_strategy", "enable_comparison",
                 "quality_threshold", "seed", "width", "height", "steps", "adapters")


@dataclass
class Entry:
    id: str
    raw: dict[str, Any]
    request: GenerationRequest | None = None
    error: ImageGenError | None = None


@dataclass
class EntryResult:
    id: str
    status: str  # completed | partial | failed | invalid | skipped | interrupted
    exit_code: int
    images: int = 0
    failed: int = 0
    seconds: float = 0.0
    cost_usd: float = 0.0
    codes: list[str] = field(default_factory=list)
    folder: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def read_manifest(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(entries, manifest-wide defaults). Defaults: a YAML mapping's `defaults:`, or a JSON Lines
    line holding only `{"defaults": {...}}`; any entry may override them (`adapters: none` too)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ImageGenError("IMG_024", f"manifest {str(path)!r} cannot be read: {exc.strerror or exc}.") from None
    defaults: Any = {}
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            data = parse_yaml(text) or []
            if isinstance(data, dict):
                defaults, data = data.get("defaults") or {}, data.get("entries", [])
        else:
            data = [json.loads(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
            lines = [d for d in data if isinstance(d, dict) and set(d) == {"defaults"}]
            data = [d for d in data if not (isinstance(d, dict) and set(d) == {"defaults"})]
            defaults = lines[0]["defaults"] if lines else {}
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise ImageGenError("IMG_024", f"manifest {str(path)!r}: {' '.join(str(exc).split())[:200]}") from None
    if not isinstance(data, list) or not data or not all(isinstance(e, dict) for e in data):
        raise ImageGenError("IMG_024", f"manifest {str(path)!r} must hold a non-empty list of request mappings.")
    if not isinstance(defaults, dict) or {"id", "folder-name", "folder_name"} & set(map(str, defaults)):
        raise ImageGenError("IMG_024", f"manifest {str(path)!r}: `defaults` must be a mapping of request inputs "
                                       "other than id and folder-name (each entry has its own).")
    return data, defaults


def _raw_inputs(item: dict[str, Any]) -> dict[str, str | None]:
    return {str(k).replace("-", "_"): (None if v is None else str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in item.items()}


def build_entries(path: Path, registry: Registry, defaults: dict[str, str | None], cwd: Path | None = None) -> list[Entry]:
    """Validate every entry on its own: an invalid one is kept (with its IMG error), not fatal."""
    cwd = cwd or env.working_dir()
    entries, seen_ids, seen_folders = [], set(), {}
    items, manifest_defaults = read_manifest(path)
    # an entry's own value, else the manifest's default (a whole video's look), else the command's
    defaults = {**defaults, **{k: v for k, v in _raw_inputs(manifest_defaults).items() if v is not None}}
    for number, item in enumerate(items, start=1):
        raw = _raw_inputs(item)
        entry_id = raw.pop("id", None) or f"entry-{number}"
        if not _ID.match(entry_id):
            raise ImageGenError("IMG_024", f"manifest entry {number}: id {entry_id!r} must be letters, digits, . _ -")
        if entry_id in seen_ids:
            raise ImageGenError("IMG_024", f"manifest entry {number}: id {entry_id!r} is used twice.")
        seen_ids.add(entry_id)
        for key in ("branch_name", "oauth_token", "mcp_config"):  # Action-only inputs: meaningless here
            raw.pop(key, None)
        raw.setdefault("folder_name", str(Path(f"{path.stem}-out") / entry_id))
        for key, value in defaults.items():
            if raw.get(key) is None and value is not None:
                raw[key] = value
        entry = Entry(entry_id, raw)
        try:
            entry.request = parse_request(raw, registry, cwd=cwd)
        except ImageGenError as exc:
            entry.error = exc
        if entry.request is not None:
            other = seen_folders.get(entry.request.folder_name)
            if other is not None:
                raise ImageGenError("IMG_024", f"manifest entries {other!r} and {entry_id!r} share the folder "
                                               f"{str(entry.request.folder_name)!r}; give each its own folder-name.")
            seen_folders[entry.request.folder_name] = entry_id
        entries.append(entry)
    return entries


def finished_report(request: GenerationRequest) -> dict | None:
    """The folder's report when it records a completed run of this same request, with every image
    file present at its recorded size; None otherwise (then the entry runs again)."""
    report_path = request.folder_name / "metadata" / "generation-report.json"
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    try:
        if report["generation_summary"]["status"] != "completed":
            return None
        stored = report["request"]
        current = {
            "image_prompt": request.image_prompt, "image_count": request.image_count, "models": request.models_input,
            "generation_strategy": request.generation_strategy, "enable_comparison": request.enable_comparison,
            "quality_threshold": request.quality_threshold, "seed": request.seed, "width": request.width,
            "height": request.height, "steps": request.steps, "adapters": request.adapters_input,
        }
        # reports from before adapters existed were made without any
        if any(stored.get(key, "" if key == "adapters" else None) != current[key] for key in RESUME_FIELDS):
            return None
        for image in report["images"]:
            file = request.folder_name / "images" / image["filename"]
            if not file.is_file() or file.stat().st_size != image["file_size_bytes"]:
                return None
        if not (request.folder_name / "images" / "generated-image.png").is_file():
            return None
    except (KeyError, TypeError):
        return None
    return report


def run_batch(entries: list[Entry], registry: Registry, limits: Limits, *, events: Events,
              stop: threading.Event | None = None, entries_at_once: int = 2, budget_usd: float | None = None,
              history: History | None = None) -> list[EntryResult]:
    """Run every valid, unfinished entry; results in manifest order. `budget_usd`: the whole
    manifest's budget: each entry gets what is left (or its own budget-usd, whichever is less), and
    an entry that would start with nothing left is skipped."""
    stop = stop or threading.Event()
    # one context for every entry, on the cluster's warm replicas; each entry's events say its id
    context = RunContext(registry, limits, events=events, stop=stop, history=history or History(), resident=True)
    results: dict[str, EntryResult] = {}
    todo = [entry for entry in entries if not _settled(entry, events, results)]
    events.emit("batch_started", entries=len(entries), to_run=len(todo), skipped=len(entries) - len(todo))
    spending = _Spending(budget_usd)

    def one(entry: Entry) -> EntryResult:
        return _run_entry(entry, context, spending)

    with ThreadPoolExecutor(max_workers=max(1, entries_at_once), thread_name_prefix="batch") as pool:
        # each entry in a copy of this context: a batch from the front door reads its client's environment
        futures = [pool.submit(contextvars.copy_context().run, one, entry) for entry in todo]
        for entry, future in zip(todo, futures):
            results[entry.id] = future.result()
    events.emit("batch_finished", ok=sum(r.ok for r in results.values()), total=len(results))
    return [results[e.id] for e in entries]


def _settled(entry: Entry, events: Events, results: dict[str, EntryResult]) -> bool:
    """An invalid entry, or one whose folder holds its finished report: its result, and nothing to run."""
    if entry.error is not None:
        results[entry.id] = EntryResult(entry.id, "invalid", entry.error.exit_status, codes=[entry.error.code],
                                        message=entry.error.message)
        events.emit("entry_invalid", entry=entry.id, code=entry.error.code, message=entry.error.message)
        return True
    report = finished_report(entry.request)
    if report is None:
        return False
    summary = report["generation_summary"]
    results[entry.id] = EntryResult(entry.id, "skipped", 0, images=summary["successful_generations"],
                                    seconds=summary["total_time_seconds"], cost_usd=report.get("cost_usd", 0.0),
                                    folder=str(entry.request.folder_name), message="already complete")
    events.emit("entry_skipped", entry=entry.id, folder=str(entry.request.folder_name))
    return True


class _Spending:
    """The manifest's budget across entries running at once: each holds its share until it reports
    what it spent."""

    def __init__(self, budget_usd: float | None):
        self.budget_usd = budget_usd
        self.spent = 0.0
        self.reserved = 0.0
        self.lock = threading.Lock()

    def hold(self, wanted: float | None) -> float:
        """What an entry may spend (its own budget, at most what is left); <= 1e-9: nothing is left."""
        with self.lock:
            left = self.budget_usd - self.spent - self.reserved
            held = min(wanted if wanted is not None else left, left)
            if held > 1e-9:
                self.reserved += held
            return held

    def settle(self, held: float, spent: float) -> None:
        with self.lock:
            self.reserved -= held
            self.spent += spent


def _run_entry(entry: Entry, context: RunContext, spending: _Spending) -> EntryResult:
    events, request, folder = context.events, entry.request, str(entry.request.folder_name)
    if context.stop.is_set():
        return EntryResult(entry.id, "interrupted", 130, folder=folder, message="not started: the batch was interrupted")
    held = 0.0
    if spending.budget_usd is not None:
        held = spending.hold(request.budget_usd)
        if held <= 1e-9:
            events.emit("entry_skipped", entry=entry.id, reason="budget")
            return EntryResult(entry.id, "skipped_budget", 1, codes=["IMG_029"], folder=folder,
                               message=f"not started: the manifest's budget ({format_usd(spending.budget_usd)}) is spent")
        request = request.model_copy(update={"budget_usd": held})
    tagged = Events(*[(lambda event, sink=sink: sink({**event, "entry": entry.id})) for sink in events.sinks])
    started = time.monotonic()
    events.emit("entry_started", entry=entry.id)
    try:
        result = run_request(request, context.for_run(events=tagged))
    except ImageGenError as exc:  # preflight: disk, credentials, missing weights
        spending.settle(held, 0.0)
        events.emit("entry_finished", entry=entry.id, status="failed", code=exc.code)
        return EntryResult(entry.id, "failed", exc.exit_status, seconds=time.monotonic() - started,
                           codes=[exc.code], folder=folder, message=exc.message)
    outcome = result.outcome
    spending.settle(held, sum(outcome.costs.values()))
    codes = sorted({f.code for f in outcome.failures} | ({outcome.error.code} if outcome.error else set()))
    status = "interrupted" if outcome.stopped == "interrupted" else outcome.status
    events.emit("entry_finished", entry=entry.id, status=status, images=len(outcome.images))
    return EntryResult(entry.id, status, result.exit_code, images=len(outcome.images),
                       failed=len(outcome.failures), seconds=outcome.total_seconds,
                       cost_usd=sum(outcome.costs.values()), codes=codes, folder=folder,
                       message=outcome.error.message if outcome.error else "")


def summary_table(results: list[EntryResult]) -> str:
    from cluster.planning.costs.money import format_usd

    header = ("id", "status", "images", "failed", "codes", "seconds", "cost")
    rows = [(r.id, r.status, str(r.images), str(r.failed), ",".join(r.codes) or "—", f"{r.seconds:.1f}",
             format_usd(r.cost_usd)) for r in results]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    done = sum(r.ok for r in results)
    lines.append(f"\n{done}/{len(results)} entries succeeded "
                 f"({sum(r.images for r in results)} images, {format_usd(sum(r.cost_usd for r in results))})")
    return "\n".join(lines)
