"""Can a model run here, now? Checked on the driver, before any actor starts.

Cheap checks only: a local folder with `model_index.json`, a Hugging Face cache entry
(never a download), or Google credentials in the environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cluster import env
from cluster.errors import ImageGenError
from models.registry import ModelSpec


@dataclass(frozen=True)
class Availability:
    model: str
    ok: bool
    code: str | None = None
    reason: str = ""

    def raise_if_missing(self) -> None:
        if not self.ok:
            raise ImageGenError(self.code or "IMG_002", self.reason)


def check(spec: ModelSpec) -> Availability:
    if spec.backend == "imagen":
        return _check_google(spec)
    if spec.backend == "custom":
        return _check_factory(spec)
    kind, value = spec.source_kind()
    if kind == "builtin":
        from models.tiny import BUILDERS  # torch-free: only names

        if value in BUILDERS:
            return Availability(spec.id, True)
        return Availability(spec.id, False, "IMG_002", f"model {spec.id!r}: no builtin pipeline named {value!r}.")
    if kind == "local":
        if (Path(value) / "model_index.json").is_file():
            return Availability(spec.id, True)
        return Availability(
            spec.id, False, "IMG_002",
            f"model {spec.id!r}: {value} holds no diffusers pipeline (no model_index.json); "
            "point `source` at a folder saved with save_pretrained.",
        )
    if hub_snapshot(value, spec.revision) is not None:
        return Availability(spec.id, True)
    fetch = spec.fetch_command()
    return Availability(
        spec.id, False, "IMG_002",
        f"model {spec.id!r}: weights for {value} are not in the Hugging Face cache and runs never download. "
        f"Fetch them once with `{fetch}` (accept the model's license on huggingface.co first if it is gated), "
        "or set `source` to a local folder.",
    )


def hub_file(repo_id: str, filename: str, revision: str | None = None) -> Path | None:
    """A file of a repo in the local Hugging Face cache, or None; never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with diffusers
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename, revision=revision)
    except Exception:  # malformed repo ids are simply "not cached"
        return None
    return Path(found) if isinstance(found, str) else None


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """The cached snapshot folder of a diffusers repo, or None."""
    index = hub_file(repo_id, "model_index.json", revision)
    return index.parent if index is not None else None


def _check_factory(spec: ModelSpec) -> Availability:
    import importlib.util

    module = (spec.factory or "").partition(":")[0]
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if found:
        return Availability(spec.id, True)
    return Availability(spec.id, False, "IMG_002", f"model {spec.id!r}: module {module!r} of its factory is not importable.")


def _check_google(spec: ModelSpec) -> Availability:
    creds = env.google_credentials()
    if creds.present:
        return Availability(spec.id, True)
    return Availability(
        spec.id, False, "IMG_007",
        f"model {spec.id!r} runs on Google Vertex AI and no credentials are set: export GOOGLE_API_KEY "
        "(Vertex express mode), or GOOGLE_CLOUD_PROJECT with Application Default Credentials "
        "(`gcloud auth application-default login`).",
    )
