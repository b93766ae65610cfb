"""Where an adapter's weights are on this machine, whether they are here at all, and their hash.

Checked like model weights (models.availability): a local file, a Hugging Face cache entry (never a
download), or a builtin tiny adapter built on first use. Runs on the driver (availability, the
hash every image records) and on each replica's node (the file it loads, which must hash the same).
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from cluster.errors import ImageGenError
from cluster.work import AdapterUse
from models.adapters import CODE, AdapterRegistry, AdapterSpec, Choice
from models.registry import parse_source

_HASHES: dict[tuple[str, int, int], str] = {}
_HASH_LOCK = threading.Lock()


def locate(source: str, weight_name: str | None, revision: str | None, cache_root: Path) -> Path | None:
    """The adapter's .safetensors file on this machine, or None when it is not here."""
    kind, value = parse_source(source)
    if kind == "builtin":
        from models.tiny_adapters import TINY_ADAPTERS, tiny_adapter_file

        return tiny_adapter_file(value, cache_root) if value in TINY_ADAPTERS else None
    if kind == "local":
        path = Path(value)
        return path if path.is_file() else None
    from models.availability import hub_file

    return hub_file(value, weight_name or "", revision)


def missing_reason(spec: AdapterSpec, cache_root: Path) -> str:
    """Why `spec` cannot be used here ("" when its weights are here)."""
    kind, value = spec.source_kind()
    if kind == "builtin":
        from models.tiny_adapters import TINY_ADAPTERS

        return "" if value in TINY_ADAPTERS else f"adapter {spec.id!r}: no builtin adapter named {value!r}."
    if kind == "local":
        path = Path(value)
        if path.is_file():
            return "" if path.suffix == ".safetensors" else (
                f"adapter {spec.id!r}: {value} is not a .safetensors file (pickled weights are not loaded).")
        return f"adapter {spec.id!r}: {value} does not exist; point `source` at a .safetensors file."
    if locate(spec.source, spec.weight_name, spec.revision, cache_root) is not None:
        return ""
    return (f"adapter {spec.id!r}: {spec.weight_name} of {value} is not in the Hugging Face cache and runs never "
            f"download. Fetch it once with `{spec.fetch_command()}` (on every GPU node), or set `source` to a "
            "local .safetensors file.")


def sha256_of(path: Path) -> str:
    """The file's SHA-256, computed once per (path, size, modification time) in this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _HASH_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    with _HASH_LOCK:
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def resolve(choices: tuple[Choice, ...], registry: AdapterRegistry, cache_root: Path) -> tuple[AdapterUse, ...]:
    """The adapters a request names, with their weights' hashes; IMG_031 (with the fetch command)
    when one is not here."""
    uses = []
    for adapter_id, scale in choices:
        spec = registry.get(adapter_id)
        reason = missing_reason(spec, cache_root)
        if reason:
            raise ImageGenError(CODE, reason)
        path = locate(spec.source, spec.weight_name, spec.revision, cache_root)
        uses.append(AdapterUse(spec.id, scale, sha256_of(path), spec.source, spec.weight_name, spec.revision,
                               spec.trigger_words))
    return tuple(uses)


def total_gb(uses: tuple[AdapterUse, ...], cache_root: Path) -> float:
    """GiB of the adapters' files (what loading them holds, in the file's dtype)."""
    paths = [locate(u.source, u.weight_name, u.revision, cache_root) for u in uses]
    return sum(p.stat().st_size for p in paths if p is not None) / 2**30
