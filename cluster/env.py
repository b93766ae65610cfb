"""Every environment variable the project reads, read here and nowhere else.

A run handed to the warm cluster's front door reads the environment of the client that sent it,
not the front door's own: `overlay` sets the client's values (RUN_VARIABLES) for the code running
in its context, and every read here goes through `_get`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

# name -> value (None: unset) for the run in this context; None: the process's own environment
_OVERLAY: ContextVar[dict[str, str | None] | None] = ContextVar("kamui_env_overlay", default=None)
_CWD: ContextVar[Path | None] = ContextVar("kamui_working_dir", default=None)


def _get(name: str) -> str | None:
    overlay = _OVERLAY.get()
    if overlay is not None and name in overlay:
        return overlay[name]
    return os.environ.get(name)


@contextlib.contextmanager
def overlay(values: Mapping[str, str | None], cwd: Path | None = None) -> Iterator[None]:
    """Within this block (this thread's context, and contexts copied from it), `values` stand in for
    the process environment's (a value None reads as unset), and `cwd` for its working directory."""
    token, cwd_token = _OVERLAY.set(dict(values)), _CWD.set(cwd)
    try:
        yield
    finally:
        _CWD.reset(cwd_token)
        _OVERLAY.reset(token)


def working_dir() -> Path:
    """The folder relative paths of a run mean: its caller's working directory."""
    return _CWD.get() or Path.cwd()


def cache_dir() -> Path:
    """Where tiny models, the run history and other per-user state live."""
    explicit = _get("KAMUI_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = _get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kamui-multi-image"


def adapters_config() -> Path | None:
    """KAMUI_ADAPTERS_CONFIG: another adapters.yaml, as the caller set it (a run handed to the front
    door reads the client's, relative to the client's folder; set it on every node too: replicas
    read its family settings); None: the bundled one."""
    value = _get("KAMUI_ADAPTERS_CONFIG")
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else working_dir() / path


def history_path() -> Path | None:
    value = _get("KAMUI_HISTORY_DB")
    return Path(value).expanduser() if value else None


def ray_address() -> str | None:
    """RAY_ADDRESS: the cluster Ray itself joins when none is named."""
    return _get("RAY_ADDRESS") or None


def cuda_visible_devices() -> str | None:
    """CUDA_VISIBLE_DEVICES as set (None: unset, every card visible; "": none visible)."""
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def pci_device_order() -> str:
    """Number CUDA's cards in PCI bus order, as nvidia-smi does, in this process and what it starts
    (Ray's raylet and workers inherit it): the memory read from nvidia-smi's card N is then the
    memory of the card CUDA_VISIBLE_DEVICES=N gives a replica. CUDA's own default numbers the
    fastest card first. A different order the user set is kept, with a note saying what it costs."""
    order = os.environ.get("CUDA_DEVICE_ORDER")
    if order is None:
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
        return ""
    if order != "PCI_BUS_ID":
        return (f"CUDA_DEVICE_ORDER={order!r}: CUDA numbers the cards otherwise than nvidia-smi, which gives their "
                "memory; on a machine of unlike cards unset it (the project uses PCI_BUS_ID)")
    return ""


def github_output_path() -> Path | None:
    value = _get("GITHUB_OUTPUT")
    return Path(value) if value else None


@dataclass(frozen=True)
class GoogleCredentials:
    """What google-genai needs, gathered once. `api_key` must never be logged."""

    api_key: str | None = field(repr=False)
    project: str | None
    location: str
    application_credentials: str | None
    base_url: str | None

    @property
    def adc_file(self) -> Path | None:
        """The Application Default Credentials file, when one is present."""
        if self.application_credentials:
            path = Path(self.application_credentials).expanduser()
            return path if path.is_file() else None
        default = Path.home() / ".config" / "gcloud" / "application_default_credentials.json"
        return default if default.is_file() else None

    @property
    def present(self) -> bool:
        return bool(self.api_key) or (bool(self.project) and self.adc_file is not None)

    def redact(self, text: str) -> str:
        """`text` with the API key replaced, for anything that may be shown or stored."""
        if self.api_key and self.api_key in text:
            text = text.replace(self.api_key, "***")
        return text


def google_credentials() -> GoogleCredentials:
    return GoogleCredentials(
        api_key=_get("GOOGLE_API_KEY") or None,
        project=_get("GOOGLE_CLOUD_PROJECT") or None,
        location=_get("GOOGLE_CLOUD_LOCATION") or "us-central1",
        application_credentials=_get("GOOGLE_APPLICATION_CREDENTIALS") or None,
        base_url=_get("GOOGLE_VERTEX_BASE_URL") or None,
    )


def storage_emulator_host() -> str | None:
    return _get("STORAGE_EMULATOR_HOST") or None


# What a process of this project started on a cluster's node must see as this one does: the Serve
# replica of `multi-image serve` inherits its raylet's environment, which on a joined cluster is
# the environment of whoever ran `ray start`, not of the shell that started the server.
FORWARDED = ("KAMUI_CACHE_DIR", "XDG_CACHE_HOME", "KAMUI_HISTORY_DB", "GOOGLE_API_KEY", "GOOGLE_CLOUD_PROJECT",
             "GOOGLE_CLOUD_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_VERTEX_BASE_URL",
             "STORAGE_EMULATOR_HOST", "KAMUI_ADAPTERS_CONFIG")


def forwarded() -> tuple[tuple[str, str], ...]:
    """The FORWARDED variables set here, as (name, value) pairs. Values may be secrets: never log them."""
    paths = {"KAMUI_ADAPTERS_CONFIG": adapters_config}  # relative to this process's folder, not the other's
    return tuple((name, str(paths[name]()) if name in paths else value)
                 for name in FORWARDED if (value := _get(name)))


# What a run reads from its caller's environment: a `generate` handed to the front door brings these
# (set or not: one the client lacks is unset for its run, whatever the front door's process has).
RUN_VARIABLES = (*FORWARDED, "GITHUB_OUTPUT")


def for_run() -> dict[str, str | None]:
    """RUN_VARIABLES as this process sees them (None: unset). Values may be secrets: never log them."""
    return {name: _get(name) or None for name in RUN_VARIABLES}


def runtime_dir() -> Path:
    """Where the warm cluster's front door keeps its socket: KAMUI_RUNTIME_DIR, else a folder of this
    user's own under /tmp (the front door and its clients must agree, so TMPDIR is not read)."""
    explicit = os.environ.get("KAMUI_RUNTIME_DIR")
    if explicit:
        return Path(explicit).expanduser()
    return Path("/tmp") / f"kamui-multi-image-{os.getuid()}"


def take(name: str) -> str | None:
    """A secret's value, removed from this process's environment as it is read: processes started
    from here (an embedded Ray's workers) inherit the environment and have no use for it."""
    return os.environ.pop(name, None) or None
