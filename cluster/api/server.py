"""Starting and stopping the API: keys, the bind address, Ray Serve on the embedded instance or a
joined cluster, the models kept resident."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from cluster.errors import ImageGenError

APP_NAME = "kamui-multi-image"
LOOPBACK = {"localhost"}


def load_keys(env_name: str | None, file: str | None) -> list[str]:
    """API keys from an environment variable (comma-separated) and/or a file (one per line)."""
    keys: list[str] = []
    if env_name:
        value = os.environ.get(env_name)
        if not value:
            raise ImageGenError("IMG_011", f"--api-key-env {env_name!r}: that environment variable is not set.")
        keys += [k.strip() for k in value.split(",") if k.strip()]
    if file:
        try:
            keys += [line.strip() for line in Path(file).read_text(encoding="utf-8").splitlines()
                     if line.strip() and not line.startswith("#")]
        except OSError as exc:
            raise ImageGenError("IMG_011", f"--api-key-file {file!r} cannot be read ({exc.strerror}).") from None
    if any(len(k) < 16 for k in keys):
        raise ImageGenError("IMG_011", "API keys must be at least 16 characters long.")
    return keys


def is_loopback(host: str) -> bool:
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, keys: list[str]) -> None:
    if not keys and not is_loopback(host):
        raise ImageGenError("IMG_011", f"--host {host!r} is reachable from other machines: give it an API key "
                                       "(--api-key-env or --api-key-file), or bind 127.0.0.1.")


def deploy(config, host: str, port: int) -> str:
    """Ray Serve on the connected cluster, the API deployed; returns its base URL."""
    from ray import serve

    from cluster.api.app import ImageAPI

    serve.start(http_options={"host": host, "port": port}, logging_config={"log_level": "WARNING"})
    serve.run(ImageAPI.bind(config), name=APP_NAME, route_prefix="/")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def undeploy(stop_serve: bool) -> None:
    from ray import serve

    try:
        serve.delete(APP_NAME)
        if stop_serve:
            serve.shutdown()
    except Exception:  # noqa: BLE001 - the cluster may be going away with us
        pass
